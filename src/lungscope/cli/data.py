"""The data verbs: audit, models."""

from __future__ import annotations

import argparse
from pathlib import Path

from lungscope.cli.common import EXIT_OK, add_labels_option, output_file, whole_number, write_json
from lungscope.text import format_table


def _cmd_audit(args: argparse.Namespace) -> int:
    from lungscope.data.audit import audit_dataset, format_audit

    report = audit_dataset(args.source, labels=args.labels, workers=args.workers)
    print(format_audit(report))
    if args.json:
        write_json(report, args.json)
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
    add_labels_option(p, "label scheme", default="binary")
    p.add_argument("--json", type=output_file, metavar="OUT", help="also write the full report as JSON")
    p.add_argument("--workers", type=whole_number(1), default=None, help="reader threads (default: one per core)")
    p.set_defaults(func=_cmd_audit)


def _cmd_models(args: argparse.Namespace) -> int:
    from lungscope.models import list_models

    rows = [["name", "input", "parameters", "family", "description"]]
    rows += [[s.name, f"{s.input_size}x{s.input_size}", f"{s.parameter_count():,}", s.family, s.description]
             for s in list_models()]
    print(format_table(rows, right={2}))
    return EXIT_OK


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the networks lungscope can build, with input size and parameters",
                       description="List every registered network (1-channel input, 2 classes).")
    p.set_defaults(func=_cmd_models)


# Train flags and the TrainConfig fields they set; a flag left out keeps the config file's value (or the default).

VERBS = [_add_audit, _add_models]

