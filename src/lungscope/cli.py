"""The ``lungscope`` command: a thin layer over the Python API.

Every verb has ``--help``. Errors that are the user's (a bad path, a bad option, an unreadable file) print one line
and exit 1; nothing a user can cause ends in a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
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


_VERBS: list[Callable[[argparse._SubParsersAction], None]] = [_add_audit, _add_models, _add_train, _add_cv, _add_tune]


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
