"""The evaluation verbs: evaluate, calibrate, compare."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lungscope.cli.common import (
    EXIT_OK,
    EXIT_PARTIAL,
    MODEL_HELP,
    add_labels_option,
    add_model_options,
    add_roi_option,
    load_model,
    output_file,
    output_folder,
    printed_warnings,
    whole_number,
)
from lungscope.errors import ConfigError


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from lungscope.evaluation.evaluate import evaluate_run

    classifier = load_model(args, args.run)
    with printed_warnings(args.verb):
        evaluation = evaluate_run(args.run, args.data, labels=args.labels, split=args.split,
                                  calibrated=args.calibrated, n_resamples=args.resamples, seed=args.seed,
                                  batch_size=args.batch_size, roi=args.roi, classifier=classifier)
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


def _add_resamples(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resamples", type=whole_number(0), default=1000, metavar="N",
                   help="patient-bootstrap resamples for the confidence intervals (default 1000; 0: none)")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="metrics with patient-bootstrap 95%% CIs, calibration and plots of a run on labelled data",
        description="Evaluate a run on a labelled folder or CSV manifest at the run's operating threshold (chosen on "
        "its validation split, never on these data) and at 0.5: accuracy, precision, recall, specificity, F1, "
        "balanced accuracy, ROC-AUC, PR-AUC, each with a 95% CI by bootstrap over patients; the confusion matrix; "
        "the expected calibration error. Unreadable files are listed and skipped (exit code 2).",
    )
    p.add_argument("run", type=Path, metavar="RUN_DIR", help=MODEL_HELP)
    p.add_argument("--data", type=Path, required=True, help="folder or CSV manifest, e.g. RUN_DIR/split.csv")
    p.add_argument("--split", help="evaluate only the rows of this split of --data (e.g. test: held-out patients)")
    add_labels_option(p, "label scheme of --data (default: the run's)")
    p.add_argument("--calibrated", action="store_true",
                   help="calibrated probabilities (the run's temperature and bias)")
    p.add_argument("--json", type=output_file, metavar="OUT", help="write the full report as JSON")
    p.add_argument("--predictions", type=output_file, metavar="OUT.csv", help="write one row per image as CSV")
    p.add_argument("--plots", type=output_folder, metavar="DIR",
                   help="write ROC, PR, confusion, reliability and training "
                   "curve PNGs")
    p.add_argument("--html", type=output_file, metavar="OUT", help="write a self-contained HTML report")
    _add_resamples(p)
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--batch-size", type=whole_number(1), default=32, help="images per forward pass (default 32)")
    add_roi_option(p)
    add_model_options(p)
    p.set_defaults(func=_cmd_evaluate)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    if (args.data is None) != (args.site is None):
        raise ConfigError("site calibration needs both --data LABELLED_DIR and --site NAME")
    if args.site is None:
        from lungscope.evaluation.operating import calibrate_run

        point = calibrate_run(args.run, target_sensitivity=args.target_sensitivity, calibration=args.calibration)
        print(json.dumps(point, indent=2))
        return EXIT_OK
    from lungscope.evaluation.formatting import format_ci, format_probability
    from lungscope.sites import calibrate_site

    record = calibrate_site(args.run, args.data, args.site, target_sensitivity=args.target_sensitivity,
                            calibration=args.calibration, n_resamples=args.resamples)
    print(f"site {args.site}: {record['n_images']} images of {record['n_patients']} patients "
          f"({', '.join(f'{n} {k}' for k, n in record['n_per_class'].items())})")
    for name, key in (("the model's own operating point", "stored_operating_point"),
                      ("the site's operating point (out of fold)", "out_of_fold")):
        rates = record[key]
        print(f"  {name}: " + ", ".join(f"{rate} {format_ci(*rates[rate])}" for rate in ("sensitivity", "specificity")))
    print(f"  threshold {format_probability(record['operating_point']['threshold_calibrated'])} on the site-calibrated "
          f"probability; saved to {record['path']}; use it with --site {args.site}")
    return EXIT_OK


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate", help="fit a model's operating point on a site's own labelled X-rays (or refit it on validation)",
        description="With --data and --site: fit the calibration and threshold of a model (run folder, checkpoint or "
        "default) on a hospital's own labelled images, grouped by patient, and save them as that site's operating "
        "point for --site NAME in predict, serve and evaluate; prints the sensitivity and specificity (95% CI, "
        "patient bootstrap) that the refitted rule gives on held-out folds of those patients, beside the model's own. "
        "Without them: refit a run's operating point on its validation split and store it in the run.",
    )
    p.add_argument("run", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--data", type=Path, help="the site's labelled folder or CSV manifest")
    p.add_argument("--site", metavar="NAME", help="the site's name (letters, digits, '.', '_', '-')")
    _add_resamples(p)
    p.add_argument("--target-sensitivity", type=float, metavar="X",
                   help="the most specific threshold reaching this validation sensitivity (default: Youden's J)")

    def add() -> None:
        from lungscope.evaluation.operating import CALIBRATIONS, DEFAULT_CALIBRATION

        p.add_argument("--calibration", choices=CALIBRATIONS, default=DEFAULT_CALIBRATION, help="temperature alone, "
                       f"or with a per-class bias that can undo a shift (default: {DEFAULT_CALIBRATION})")

    p.defer(add)
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
        "compare", help="runs side by side: model, options, parameters, size, metrics with 95%% CIs",
        description="Compare finished runs. With --data every run is evaluated on it (metrics at each run's operating "
        "threshold, patient-bootstrap 95% CIs); without, each run's validation accuracy and ROC-AUC at its best epoch "
        "are shown (no CI; validation splits may differ between runs).",
    )
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run folders to compare")
    p.add_argument("--data", type=Path, help="folder or CSV manifest to evaluate every run on, e.g. RUN_DIR/split.csv")
    p.add_argument("--split", help="evaluate only the rows of this split of --data (e.g. test)")
    add_labels_option(p, "label scheme of --data (default: the runs')")
    _add_resamples(p)
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--csv", type=output_file, metavar="OUT", help="also write the table as CSV, one row per run")
    p.set_defaults(func=_cmd_compare)


VERBS = [_add_evaluate, _add_calibrate, _add_compare]

