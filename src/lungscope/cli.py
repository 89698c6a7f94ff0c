"""The ``lungscope`` command: a thin layer over the Python API.

Every verb has ``--help``. Errors that are the user's (a bad path, a bad option, an unreadable file) print one line
and exit 1; nothing a user can cause ends in a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lungscope import __version__
from lungscope.errors import ConfigError, LungscopeError

if TYPE_CHECKING:
    from lungscope.training import TrainConfig

EXIT_OK, EXIT_USAGE, EXIT_PARTIAL, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a usage error; lungscope keeps 2 for "some files could not be read"."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _write_json(data: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _cmd_audit(args: argparse.Namespace) -> int:
    from lungscope.data.audit import audit_dataset, format_audit

    report = audit_dataset(args.source, labels=args.labels, workers=args.workers)
    print(format_audit(report))
    if args.json:
        _write_json(report, args.json)
        print(f"\nwrote {args.json}")
    return EXIT_OK


def _add_audit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit",
        help="summarise a collection: counts, patients, imbalance, unreadable files, duplicates, patient leakage",
        description="Audit a folder of chest X-rays (class folders, split/class folders, a flat folder whose file "
        "names carry the label) or a CSV manifest. Never stops at a bad file: each is listed as unreadable.",
    )
    p.add_argument("source", type=Path, help="folder or CSV manifest (path,label[,patient_id][,split])")
    p.add_argument("--labels", default="binary", help="label scheme: binary, three-class or tb (default: binary)")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the full report as JSON")
    p.add_argument("--workers", type=int, default=None, help="reader threads (default: one per core)")
    p.set_defaults(func=_cmd_audit)


def _cmd_models(args: argparse.Namespace) -> int:
    from lungscope.models import list_models

    rows = [["name", "input", "parameters", "family", "description"]]
    rows += [[s.name, f"{s.input_size}x{s.input_size}", f"{s.parameter_count():,}", s.family, s.description]
             for s in list_models()]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.rjust(w) if i == 2 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))) + "  " + row[4])
    return EXIT_OK


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the networks lungscope can build, with input size and parameters",
                       description="List every registered network (1-channel input, 2 classes).")
    p.set_defaults(func=_cmd_models)


# Train flags and the TrainConfig fields they set; a flag left out keeps the config file's value (or the default).
_TRAIN_FLAGS: list[tuple[str, dict[str, object]]] = [
    ("--data", {"help": "training data: folder or CSV manifest"}),
    ("--model", {"help": "registry name (see `lungscope models`)"}),
    ("--labels", {"choices": ["binary", "three-class", "tb"], "help": "label scheme"}),
    ("--manifest", {"help": "an existing split manifest (path,label,patient_id,split) to train on"}),
    ("--pretrained", {"help": "imagenet, PATH of a state dict, or none"}),
    ("--image-size", {"type": int, "help": "input side (default: the model's)"}),
    ("--epochs", {"type": int}),
    ("--batch-size", {"type": int}),
    ("--lr", {"type": float, "help": "learning rate"}),
    ("--optimizer", {"choices": ["adam", "sgd"]}),
    ("--weight-decay", {"type": float}),
    ("--scheduler", {"choices": ["none", "plateau", "cosine"]}),
    ("--early-stopping", {"type": int, "metavar": "EPOCHS", "help": "stop after this many epochs without improvement"}),
    ("--freeze-epochs", {"type": int, "help": "two-stage fine-tuning: epochs training only the new head"}),
    ("--val-fraction", {"type": float}),
    ("--test-fraction", {"type": float}),
    ("--limit", {"type": int, "help": "use at most N images (patient-grouped, stratified): quick runs"}),
    ("--target-sensitivity", {"type": float, "metavar": "X", "help": "operating threshold: the most specific one "
                              "reaching this validation sensitivity (default: maximise Youden's J)"}),
    ("--seed", {"type": int}),
    ("--workers", {"type": int, "help": "DataLoader worker processes (default 0: images are preloaded)"}),
    ("--device", {"help": "auto, cpu, cuda, cuda:N or mps"}),
]


def _train_overrides(args: argparse.Namespace) -> dict[str, object]:
    overrides = {flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_")) for flag, _ in _TRAIN_FLAGS}
    overrides["class_weights"] = True if args.class_weights else None
    overrides["sampler"] = "weighted" if args.weighted_sampler else None
    overrides["clahe"] = True if args.clahe else None
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides.get("pretrained") == "none":
        overrides["pretrained"] = None  # explicit: train from scratch even where the config names weights
    return overrides


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of --config (if given) with the train flags over it and ``out`` from --out."""
    from lungscope.training import TrainConfig

    overrides = {"out": str(args.out), **_train_overrides(args)}
    config = TrainConfig.from_yaml(args.config, **overrides) if args.config else TrainConfig.from_dict(overrides)
    if not config.data and not config.manifest:
        raise ConfigError("give the training data with --data DIR (or --manifest FILE, or data: in --config)")
    return config


def _cmd_train(args: argparse.Namespace) -> int:
    from lungscope.training import resume_config, train

    config = resume_config(args.out, **_train_overrides(args)) if args.resume else _train_config(args)
    summary = train(config, resume=args.resume)
    print(json.dumps(summary, indent=2))
    return EXIT_OK


def _add_train_options(p: argparse.ArgumentParser, out_help: str) -> None:
    """--config, --out and every training flag: shared by train, cv and tune."""
    p.add_argument("--config", type=Path, help="YAML file of options (see configs/)")
    p.add_argument("--out", type=Path, required=True, help=out_help)
    for flag, options in _TRAIN_FLAGS:
        p.add_argument(flag, **options)  # type: ignore[arg-type]
    p.add_argument("--class-weights", action="store_true", help="weight the loss by inverse class frequency")
    p.add_argument("--weighted-sampler", action="store_true", help="oversample minority classes instead")
    p.add_argument("--clahe", action="store_true", help="contrast-limited adaptive histogram equalisation")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model; writes a run folder (config, split, metrics, curves, checkpoints)",
        description="Train on a patient-grouped split. A YAML --config can hold every option; flags override it. "
        "Ctrl-C leaves a resumable run: continue it with --resume --out RUN_DIR.",
    )
    _add_train_options(p, "run folder to write")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.set_defaults(func=_cmd_train)


def _cmd_cv(args: argparse.Namespace) -> int:
    from lungscope.training import cross_validate

    summary = cross_validate(_train_config(args), args.folds)
    print(json.dumps(summary, indent=2))
    return EXIT_OK


def _add_cv(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cv", help="k-fold cross-validation grouped by patient: a run per fold and the mean and std of each metric",
        description="Split --data into K patient-grouped, label-stratified folds (OUT/folds.csv), train one run per "
        "fold (OUT/fold_k, fold k validating) and summarise each fold's best epoch in OUT/cv_summary.json and .csv. "
        "Takes every train option; re-running the same command skips finished folds and resumes an interrupted one.",
    )
    _add_train_options(p, "folder for the folds' runs and the summary")
    p.add_argument("--folds", type=int, default=5, metavar="K", help="number of folds (default 5)")
    p.set_defaults(func=_cmd_cv)


def _cmd_tune(args: argparse.Namespace) -> int:
    from lungscope.training import load_space, tune

    space = load_space(args.space) if args.space else None
    summary = tune(_train_config(args), args.trials, sampler=args.sampler, space=space, storage=args.storage,
                   study_name=args.study_name)
    print(json.dumps(summary, indent=2))
    return EXIT_OK


def _add_tune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune", help="hyper-parameter search with Optuna: a run per trial, the best config written out",
        description="Search learning rate, batch size, weight decay and optimiser (or the --space YAML) with Optuna, "
        "each trial a run in OUT/trial_NNN on one shared patient-grouped split (OUT/split.csv), maximising val_auc. "
        "Writes OUT/trials.csv and OUT/best_config.yaml (for `lungscope train --config`). The study is kept in "
        "OUT/study.db: re-running the same command resumes it up to --trials.",
    )
    _add_train_options(p, "folder for the trials' runs, the study and the best config")
    p.add_argument("--trials", type=int, default=20, metavar="N", help="trials the study should hold (default 20)")
    p.add_argument("--sampler", choices=["tpe", "random", "grid"], default="tpe",
                   help="tpe (default), random, or grid over the space's lists of choices")
    p.add_argument("--space", type=Path, metavar="FILE",
                   help="YAML search space, e.g. {lr: {low: 1e-4, high: 1e-2, log: true}, batch_size: [16, 32]}")
    p.add_argument("--storage", metavar="URL", help="Optuna storage (default sqlite:///OUT/study.db)")
    p.add_argument("--study-name", help="study name in the storage (default: OUT's folder name)")
    p.set_defaults(func=_cmd_tune)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from lungscope.evaluation.evaluate import evaluate_run

    evaluation = evaluate_run(args.run, args.data, labels=args.labels, split=args.split, calibrated=args.calibrated,
                              n_resamples=args.resamples, seed=args.seed, batch_size=args.batch_size)
    print(evaluation.format())
    written = []
    if args.predictions:
        written.append(evaluation.save_predictions(args.predictions))
    if args.json:
        written.append(evaluation.save_json(args.json))
    if args.plots:
        from lungscope.evaluation.plots import save_figures

        written += save_figures(evaluation, args.plots).values()
    if args.html:
        from lungscope.evaluation.report import write_report

        written.append(write_report(evaluation, args.html, run_dir=args.run))
    for path in written:
        print(f"wrote {path}")
    return EXIT_PARTIAL if evaluation.report["unreadable"] else EXIT_OK


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="metrics with patient-bootstrap 95% CIs, calibration and plots of a run on labelled data",
        description="Evaluate a run on a labelled folder or CSV manifest at the run's operating threshold (chosen on "
        "its validation split, never on these data) and at 0.5: accuracy, precision, recall, specificity, F1, "
        "balanced accuracy, ROC-AUC, PR-AUC, each with a 95%% CI by bootstrap over patients; the confusion matrix; "
        "the expected calibration error. Unreadable files are listed and skipped (exit code 2).",
    )
    p.add_argument("run", type=Path, metavar="RUN_DIR", help="run folder (or its best.pt)")
    p.add_argument("--data", type=Path, required=True, help="folder or CSV manifest, e.g. RUN_DIR/split.csv")
    p.add_argument("--split", help="evaluate only the rows of this split of --data (e.g. test: held-out patients)")
    p.add_argument("--labels", choices=["binary", "three-class", "tb"],
                   help="label scheme of --data (default: the run's)")
    p.add_argument("--calibrated", action="store_true", help="calibrated probabilities (the run's temperature and bias)")
    p.add_argument("--json", type=Path, metavar="OUT", help="write the full report as JSON")
    p.add_argument("--predictions", type=Path, metavar="OUT.csv", help="write one row per image as CSV")
    p.add_argument("--plots", type=Path, metavar="DIR", help="write ROC, PR, confusion, reliability and training "
                   "curve PNGs")
    p.add_argument("--html", type=Path, metavar="OUT", help="write a self-contained HTML report")
    p.add_argument("--resamples", type=int, default=1000, metavar="N", help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from lungscope.evaluation.operating import calibrate_run

    point = calibrate_run(args.run, target_sensitivity=args.target_sensitivity, calibration=args.calibration)
    print(json.dumps(point, indent=2))
    return EXIT_OK


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate", help="refit a run's temperature and operating threshold on its validation split",
        description="Refit the temperature and the operating threshold of a finished run on its validation split "
        "and store them in the run (calibration.json and best.pt).",
    )
    p.add_argument("run", type=Path, metavar="RUN_DIR", help="run folder")
    p.add_argument("--target-sensitivity", type=float, metavar="X",
                   help="the most specific threshold reaching this validation sensitivity (default: Youden's J)")
    p.add_argument("--calibration", choices=["temperature", "temperature+bias"], default="temperature+bias",
                   help="temperature alone, or with a per-class bias that can undo a shift (default)")
    p.set_defaults(func=_cmd_calibrate)


def _cmd_compare(args: argparse.Namespace) -> int:
    from lungscope.evaluation.compare import compare_runs, format_comparison

    frame = compare_runs(args.runs, args.data, labels=args.labels, split=args.split, n_resamples=args.resamples,
                         seed=args.seed)
    print(format_comparison(frame))
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(args.csv, index=False, float_format="%.6g")
        print(f"\nwrote {args.csv}")
    return EXIT_OK


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="runs side by side: model, options, parameters, size, metrics with 95% CIs",
        description="Compare finished runs. With --data every run is evaluated on it (metrics at each run's operating "
        "threshold, patient-bootstrap 95%% CIs); without, each run's validation accuracy and ROC-AUC at its best epoch "
        "are shown (no CI; validation splits may differ between runs).",
    )
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run folders to compare")
    p.add_argument("--data", type=Path, help="folder or CSV manifest to evaluate every run on, e.g. RUN_DIR/split.csv")
    p.add_argument("--split", help="evaluate only the rows of this split of --data (e.g. test)")
    p.add_argument("--labels", choices=["binary", "three-class", "tb"], help="label scheme of --data (default: the runs')")
    p.add_argument("--resamples", type=int, default=1000, metavar="N", help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--csv", type=Path, metavar="OUT", help="also write the table as CSV, one row per run")
    p.set_defaults(func=_cmd_compare)


@contextlib.contextmanager
def _printed_warnings(verb: str) -> Iterator[None]:
    """Warnings raised inside print as one ``lungscope VERB: warning: ...`` line each, without a source line."""
    with warnings.catch_warnings():  # restores warnings.showwarning on exit
        warnings.showwarning = lambda message, *_: print(f"lungscope {verb}: warning: {message}", file=sys.stderr)
        yield


def _cmd_explain(args: argparse.Namespace) -> int:
    from lungscope.explain import explain_files

    with _printed_warnings(args.verb):
        result = explain_files(args.run, args.paths, args.out, args.method or ["gradcam"], sign=args.sign,
                               layer=args.layer, batch_size=args.batch_size, device=args.device, cmap=args.cmap,
                               alpha=args.alpha, threshold=args.threshold)
    for failure in result["failed"]:
        print(f"lungscope explain: skipped {failure['path']}: {failure['error']}", file=sys.stderr)
    print(f"explained {result['images']} image(s): {len(result['written'])} figures in {args.out}, maps in "
          f"{result['maps']}")
    return EXIT_PARTIAL if result["failed"] else EXIT_OK


_EXPLAIN_METHODS = "gradcam, guided-backprop, guided-gradcam, deconvolution, integrated-gradients, occlusion"


def _add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain", help="explanation maps of a run's predictions: a figure per image and method, raw maps in maps.npz",
        description="For each image (folders are searched) and method: OUT/<stem>_<method>.png with the X-ray, the map "
        "and the overlay, titled with the prediction, and the raw signed maps at the model's resolution in "
        "OUT/maps.npz under <stem>/<method>. Unreadable files are listed and skipped (exit code 2). Methods known to "
        "fail the model-randomisation test, or flagged by the run's explain-check, print a warning.",
    )
    p.add_argument("run", type=Path, metavar="RUN_DIR", help="run folder (or its best.pt)")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files and folders")
    p.add_argument("--method", nargs="+", action="extend", metavar="M",
                   help=f"one or more of {_EXPLAIN_METHODS} (default gradcam)")
    p.add_argument("--sign", default="positive", help="positive (default), negative, absolute, or all: both signs in a "
                   "diverging colormap")
    p.add_argument("--layer", metavar="NAME", help="layer for gradcam/guided-gradcam (default: the last convolution)")
    p.add_argument("--out", type=Path, required=True, help="folder for the figures and maps.npz")
    p.add_argument("--cmap", help="matplotlib colormap (default jet; RdBu_r for --sign all)")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the heatmap (default 0.5)")
    p.add_argument("--threshold", type=float, default=0.2, help="weaker values are transparent (default 0.2 of the max)")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(func=_cmd_explain)


def _region(text: str) -> tuple[float, float, float, float]:
    try:
        x0, y0, x1, y1 = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected x0,y0,x1,y1 (four fractions), got {text!r}") from None
    return x0, y0, x1, y1


def _cmd_activations(args: argparse.Namespace) -> int:
    from lungscope.explain import activation_files

    for path in activation_files(args.run, args.image, args.out, layer=args.layer, top=args.top, region=args.region,
                                 device=args.device):
        print(f"wrote {path}")
    return EXIT_OK


def _add_activations(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "activations", help="a layer's activations on one image: a channel grid and the most active channels",
        description="Write OUT/<stem>_<layer>_activations.png (the layer's channels) and OUT/<stem>_<layer>_topK.png "
        "(the K channels with the largest mean activation, over the image or inside --region, over the X-ray).",
    )
    p.add_argument("run", type=Path, metavar="RUN_DIR", help="run folder (or its best.pt)")
    p.add_argument("image", type=Path, metavar="IMAGE", help="an image file")
    p.add_argument("--layer", metavar="NAME", help="layer name, as in the model's named_modules (default: last conv)")
    p.add_argument("--top", type=int, default=8, metavar="K", help="number of most active channels (default 8)")
    p.add_argument("--region", type=_region, metavar="X0,Y0,X1,Y1",
                   help="rank channels inside this box, in fractions of the model input (e.g. 0,0,0.5,1: left half)")
    p.add_argument("--out", type=Path, required=True, help="folder for the figures")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(func=_cmd_activations)


def _cmd_filters(args: argparse.Namespace) -> int:
    from lungscope.explain import filter_files

    print(f"wrote {filter_files(args.run, args.out, layer=args.layer)}")
    return EXIT_OK


def _add_filters(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("filters", help="a convolution's kernels as a grid (default: the first layer's)",
                       description="Write OUT/filters_<layer>.png: each kernel of the convolution on one signed scale.")
    p.add_argument("run", type=Path, metavar="RUN_DIR", help="run folder (or its best.pt)")
    p.add_argument("--layer", metavar="NAME", help="a convolution's name (default: the first)")
    p.add_argument("--out", type=Path, required=True, help="folder for the figure")
    p.set_defaults(func=_cmd_filters)


def _cmd_explain_check(args: argparse.Namespace) -> int:
    from lungscope.explain import check_files, format_check

    report = check_files(args.run, args.data, args.json, n=args.n, masks=args.masks, split=args.split,
                         methods=args.method, layer=args.layer, seed=args.seed, batch_size=args.batch_size,
                         device=args.device)
    print(format_check(report))
    for failure in report["failed"]:
        print(f"lungscope explain-check: skipped {failure['path']}: {failure['error']}", file=sys.stderr)
    print(f"\nwrote {args.json} and {args.json.with_suffix('.png')}")
    return EXIT_OK


def _add_explain_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain-check", help="how far to trust each method's maps: faithfulness, randomisation sanity, lung share",
        description="On --n images of --data, per method: deletion and insertion curves and their areas (Petsiuk et "
        "al. 2018); the Spearman correlation of maps under cascading randomisation of the weights (Adebayo et al. "
        "2018), flagged at >= 0.5; with --masks (lung masks of the same file names), the share of positive map mass "
        "inside the lung fields. Writes --json OUT, a figure beside it (.png) and RUN_DIR/explain_check.json, which "
        "`lungscope explain` reads to warn about flagged methods.",
    )
    p.add_argument("run", type=Path, metavar="RUN_DIR", help="run folder")
    p.add_argument("--data", type=Path, required=True, help="folder or CSV manifest, e.g. RUN_DIR/split.csv")
    p.add_argument("--split", help="use only the rows of this split of a manifest (e.g. test: held-out patients)")
    p.add_argument("--n", type=int, default=100, help="images drawn at random (seeded) from --data (default 100)")
    p.add_argument("--masks", type=Path, metavar="DIR", help="lung masks named as the images (1/255 = lung)")
    p.add_argument("--method", nargs="+", action="extend", metavar="M",
                   help=f"methods to check, of {_EXPLAIN_METHODS} (default: all)")
    p.add_argument("--layer", metavar="NAME", help="layer for gradcam/guided-gradcam (default: the last convolution)")
    p.add_argument("--json", type=Path, required=True, metavar="OUT", help="report to write")
    p.add_argument("--seed", type=int, default=0, help="seed of the image draw and the randomisation (default 0)")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(func=_cmd_explain_check)


def _cmd_predict(args: argparse.Namespace) -> int:
    from lungscope.inference import Classifier
    from lungscope.predict import predict_to_files, write_results_page

    if (args.explain or args.html) and args.out is None:
        raise ConfigError("--explain and --html need --out DIR for the figures and the page")
    classifier = Classifier.load(args.model)
    run = predict_to_files(
        classifier, args.paths, csv_path=args.csv, json_path=args.json, threshold=args.threshold,
        batch_size=args.batch_size, workers=args.workers,
    )
    if args.csv is None and args.json is None:
        for row in run.rows:
            print(f"{row['path']}: " + (row["error"] or f"{row['prediction']} (p = {row['probability']:.3f})"))
    figures: dict[str, str] = {}
    if args.explain:
        from lungscope.explain.files import explain_files, unique_stems

        good = [row["path"] for row in run.rows if row["error"] is None]
        result = explain_files(args.model, good, args.out, methods=args.explain, batch_size=args.batch_size)
        stems = unique_stems([Path(p) for p in good])  # the names explain_files gives its figures
        figures = {p: str(args.out / f"{stem}_{args.explain[0]}.png") for p, stem in zip(good, stems)}
        print(f"wrote {len(result['written'])} explanation figure(s) to {args.out}")
    if args.html:
        page = write_results_page(run.rows, args.out / "index.html", model=str(args.model), figures=figures)
        print(f"results page: {page.resolve()}")
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
    p.add_argument("--model", default="default", help="run folder, checkpoint, or default (the bundled model)")
    p.add_argument("--csv", type=Path, metavar="OUT", help="write path,probability,prediction,error rows")
    p.add_argument("--json", type=Path, metavar="OUT", help="write the rows as a JSON list")
    p.add_argument("--threshold", type=float, metavar="X", help="decision threshold (default: the model's own)")
    p.add_argument("--explain", nargs="+", action="extend", metavar="METHOD",
                   help=f"also write explanation figures, of {_EXPLAIN_METHODS}, into --out")
    p.add_argument("--out", type=Path, metavar="DIR", help="folder for --explain figures and --html")
    p.add_argument("--html", action="store_true", help="write OUT/index.html: the results with their figures")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    p.add_argument("--workers", type=int, help="decoding threads (default: one per core)")
    p.set_defaults(func=_cmd_predict)


def _cmd_serve(args: argparse.Namespace) -> int:
    from lungscope.inference import Classifier
    from lungscope.serve.app import run_server

    if args.max_upload_mb <= 0:
        raise ConfigError("--max-upload-mb must be positive")
    classifier = Classifier.load(args.model)
    print(f"lungscope: serving {args.model} on http://{args.host}:{args.port}/ (API docs at /docs); Ctrl-C stops")
    run_server(classifier, host=args.host, port=args.port, model_name=str(args.model),
               max_upload=int(args.max_upload_mb * 1024 * 1024))
    return EXIT_OK


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="the web page: drop X-rays, see probability, decision and heatmap; JSON API",
        description="A FastAPI app with one page and POST /api/predict, /api/explain, /api/image. Binds to "
        "127.0.0.1 unless told otherwise; uploads are never kept after the answer.",
    )
    p.add_argument("--model", default="default", help="run folder, checkpoint, or default (the bundled model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="larger uploads get 413 (default 50)")
    p.set_defaults(func=_cmd_serve)


def _cmd_export(args: argparse.Namespace) -> int:
    from lungscope.export import export_model

    difference = export_model(args.run, args.format, args.out)
    print(f"wrote {args.out} ({args.format}); largest difference from PyTorch's logits: {difference:.2e}")
    return EXIT_OK


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a run's model to ONNX or TorchScript, checked against PyTorch",
                       description="The exported graph takes a normalised (N, 1, S, S) batch and returns logits.")
    p.add_argument("run", metavar="RUN_DIR", help="run folder, checkpoint, or default")
    p.add_argument("--format", choices=["onnx", "torchscript"], required=True)
    p.add_argument("--out", type=Path, required=True, metavar="FILE")
    p.set_defaults(func=_cmd_export)


_VERBS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_audit, _add_models, _add_train, _add_cv, _add_tune, _add_evaluate, _add_calibrate, _add_compare,
    _add_explain, _add_activations, _add_filters, _add_explain_check, _add_predict, _add_serve, _add_export,
]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, one sub-command per verb."""
    parser = _Parser(prog="lungscope", description="Explainable chest X-ray screening.")
    parser.add_argument("--version", action="version", version=f"lungscope {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    sub.required = True
    for add in _VERBS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LungscopeError as error:
        print(f"lungscope {args.verb}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"lungscope {args.verb}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
