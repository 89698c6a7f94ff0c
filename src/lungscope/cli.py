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

from lungscope import __version__
from lungscope.errors import ConfigError, LungscopeError

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


def _cmd_train(args: argparse.Namespace) -> int:
    from lungscope.training import TrainConfig, resume_config, train

    overrides = _train_overrides(args)
    if args.resume:
        config = resume_config(args.out, **overrides)
    elif args.config:
        config = TrainConfig.from_yaml(args.config, out=str(args.out), **overrides)
    else:
        config = TrainConfig.from_dict({"out": str(args.out), **overrides})
    if not args.resume and not config.data and not config.manifest:
        raise ConfigError("give the training data with --data DIR (or --manifest FILE, or data: in --config)")
    summary = train(config, resume=args.resume)
    print(json.dumps(summary, indent=2))
    return EXIT_OK


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model; writes a run folder (config, split, metrics, curves, checkpoints)",
        description="Train on a patient-grouped split. A YAML --config can hold every option; flags override it. "
        "Ctrl-C leaves a resumable run: continue it with --resume --out RUN_DIR.",
    )
    p.add_argument("--config", type=Path, help="YAML file of options (see configs/)")
    p.add_argument("--out", type=Path, required=True, help="run folder to write")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    for flag, options in _TRAIN_FLAGS:
        p.add_argument(flag, **options)  # type: ignore[arg-type]
    p.add_argument("--class-weights", action="store_true", help="weight the loss by inverse class frequency")
    p.add_argument("--weighted-sampler", action="store_true", help="oversample minority classes instead")
    p.add_argument("--clahe", action="store_true", help="contrast-limited adaptive histogram equalisation")
    p.set_defaults(func=_cmd_train)


_VERBS: list[Callable[[argparse._SubParsersAction], None]] = [_add_audit, _add_models, _add_train]


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
