"""The deployment verbs: predict, serve, export."""

from __future__ import annotations

import argparse
import errno
import math
import socket
import sys
from pathlib import Path

from lungscope.cli.common import (
    EXIT_OK,
    EXIT_PARTIAL,
    MODEL_HELP,
    add_explain_methods,
    add_model_options,
    add_roi_option,
    load_model,
    output_file,
    output_folder,
    printed_warnings,
    whole_number,
)
from lungscope.errors import ConfigError
from lungscope.text import printable


def _cmd_predict(args: argparse.Namespace) -> int:
    from lungscope.predict import predict_to_files, probability_text, resolve_threshold, write_results_page

    if args.engine == "spark":
        return _predict_on_spark(args)
    if (args.explain or args.html) and args.out is None:
        raise ConfigError("--explain and --html need --out DIR for the figures and the page")
    classifier = load_model(args, args.model)
    run = predict_to_files(
        classifier, args.paths, csv_path=args.csv, json_path=args.json, threshold=args.threshold,
        batch_size=args.batch_size, workers=args.workers,
    )
    threshold = resolve_threshold(classifier, args.threshold)
    if args.csv is None and args.json is None:
        for row in run.rows:
            print(printable(f"{row['path']}: " + (row["error"] or f"{row['prediction']}, "
                                                   f"{probability_text(row, classifier.classes, threshold)}")))
    figures: dict[str, str] = {}
    if args.explain:
        from lungscope.data.naming import unique_stems
        from lungscope.explain.files import explain_files

        good = [row["path"] for row in run.rows if row["error"] is None]
        result = explain_files(args.model, good, args.out, methods=args.explain, batch_size=args.batch_size,
                               roi=args.roi)
        stems = unique_stems([Path(p) for p in good])  # the names explain_files gives its figures
        written = set(result["written"])  # a figure that could not be written is not linked
        figures = {p: figure for p, stem in zip(good, stems)
                   if (figure := str(args.out / f"{stem}_{args.explain[0]}.png")) in written}
        print(f"wrote {len(result['written'])} explanation figure(s) to {args.out}")
    if args.html:
        page = write_results_page(run.rows, args.out / "index.html", model=str(args.model),
                                  classes=classifier.classes, threshold=threshold, figures=figures)
        print(f"results page: {page.resolve()}")
    print(f"{run.n_predicted} predicted, {run.n_failed} could not be read", file=sys.stderr)
    return EXIT_PARTIAL if run.n_failed else EXIT_OK


def _predict_on_spark(args: argparse.Namespace) -> int:
    from lungscope.predict import predict_archive

    if args.explain or args.html or args.json or args.roi:
        raise ConfigError("--engine spark writes a CSV for archives with the model's own preprocessing: --explain, "
                          "--html, --json and --roi need --engine local")
    if args.csv is None:
        raise ConfigError("--engine spark needs --csv OUT for its rows")
    run = predict_archive(args.model, args.paths, csv_path=args.csv, threshold=args.threshold,
                          batch_size=args.batch_size, workers=args.workers, spark_master=args.spark_master)
    print(f"{run.n_predicted} predicted, {run.n_failed} could not be read", file=sys.stderr)
    return EXIT_PARTIAL if run.n_failed else EXIT_OK


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="predict files, folders and globs; CSV/JSON rows, optional explanations and results page",
        description="Calibrated probability of the positive class and the decision at the model's threshold for every "
        "file (JPEG/PNG/TIFF/WebP/DICOM, DICOM without extension included). A file that cannot be read gets an error "
        "row and the run goes on; CSV rows are written as they are produced. Exit code 0 when every file was "
        "predicted, 2 when some could not be read, 1 for a usage error.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="files, folders (searched recursively) or glob patterns")
    p.add_argument("--model", default="default", help=MODEL_HELP)
    p.add_argument("--csv", type=output_file, metavar="OUT", help="write path,probability,prediction,error rows")
    p.add_argument("--json", type=output_file, metavar="OUT", help="write the rows as a JSON list")
    p.add_argument("--threshold", type=float, metavar="X", help="decision threshold (default: the model's own)")
    add_explain_methods(p, "--explain", "METHOD", "also write explanation figures, of %(choices)s, into --out")
    p.add_argument("--out", type=output_folder, metavar="DIR", help="folder for --explain figures and --html")
    p.add_argument("--html", action="store_true", help="write OUT/index.html: the results with their figures")
    p.add_argument("--batch-size", type=whole_number(1), default=32, help="images per batch (default 32)")
    p.add_argument("--workers", type=whole_number(1), help="decoding threads (default: one per core)")
    add_roi_option(p)
    add_model_options(p)

    def add() -> None:
        from lungscope.features.api import ENGINES

        p.add_argument("--engine", choices=ENGINES, default=ENGINES[0],
                       help="local (default) or spark: a Spark job writes the --csv rows, for archives")

    p.defer(add)
    p.add_argument("--spark-master", default="local[*]", metavar="URL", help="Spark master (default local[*])")
    p.set_defaults(func=_cmd_predict)


def _cmd_serve(args: argparse.Namespace) -> int:
    from lungscope.serve.app import run_server

    if not 0 < args.max_upload_mb < math.inf:  # NaN fails both
        raise ConfigError(f"--max-upload-mb must be a positive number of megabytes, not {args.max_upload_mb}")
    _check_can_listen(args.host, args.port)
    classifier = load_model(args, args.model)
    print(f"lungscope: serving {args.model} on http://{args.host}:{args.port}/ (API docs at /docs); Ctrl-C stops")
    run_server(classifier, host=args.host, port=args.port, model_name=str(args.model),
               max_upload=int(args.max_upload_mb * 1024 * 1024), allowed_hosts=args.allowed_host)
    return EXIT_OK


def _check_can_listen(host: str, port: int) -> None:
    """A one-line ConfigError, before anything is announced, when the server could not bind ``host:port``."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise ConfigError(f"--host {host}: {error.strerror}") from None
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: closed connections don't count
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {host} is in use; pass --port") from None
            raise ConfigError(f"cannot listen on {host} port {port}: {error.strerror}") from None


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="the web page: drop X-rays, see probability, decision and heatmap; JSON API",
        description="A FastAPI app with one page and POST /api/predict, /api/explain, /api/image. Binds to "
        "127.0.0.1 unless told otherwise; uploads are never kept after the answer.",
    )
    p.add_argument("--model", default="default", help=MODEL_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=whole_number(0, 65535), default=8000)
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="larger uploads get 413 (default 50)")
    add_model_options(p)
    p.add_argument("--allowed-host", action="append", metavar="NAME",
                   help="a Host name the server answers, repeatable (default: --host, localhost and 127.0.0.1); "
                   "other Host headers get 400, which stops DNS-rebinding pages")
    p.set_defaults(func=_cmd_serve)


def _cmd_export(args: argparse.Namespace) -> int:
    from lungscope.export import export_model

    with printed_warnings(args.verb):
        difference = export_model(args.run, args.format, args.out)
    print(f"wrote {args.out} ({args.format}); largest difference from PyTorch's logits: {difference:.2e}")
    return EXIT_OK


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a run's model to ONNX or TorchScript, checked against PyTorch",
                       description="The exported graph takes a normalised (N, 1, S, S) batch and returns logits. "
                       "An ONNX file also carries the classes, the threshold, the calibration and the preprocessing "
                       "as JSON in its metadata (keys lungscope.classes, .threshold, .calibration, .preprocessing).")
    p.add_argument("run", metavar="RUN_DIR", help=MODEL_HELP)

    def add() -> None:
        from lungscope.export import FORMATS

        p.add_argument("--format", choices=FORMATS, required=True)

    p.defer(add)
    p.add_argument("--out", type=output_file, required=True, metavar="FILE", help="the file to write, e.g. model.onnx")
    p.set_defaults(func=_cmd_export)


VERBS = [_add_predict, _add_serve, _add_export]

