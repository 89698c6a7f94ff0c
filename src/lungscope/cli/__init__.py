"""The ``lungscope`` command: a thin layer over the Python API.

Every verb has ``--help``. Errors that are the user's (a bad path, a bad option, an unreadable file) print one line
and exit 1, output paths before any work; nothing a user can cause ends in a traceback, nor does a failing disk.
"""

from __future__ import annotations

import argparse
import io
import sys
import warnings
from collections.abc import Sequence

from lungscope import __version__
from lungscope.cli import (
    data,
    deploy,
    evaluation,
    explain,
    features,
    head,
    segment,
    training,
)
from lungscope.cli.common import EXIT_INTERRUPTED, EXIT_USAGE, Parser
from lungscope.errors import LungscopeError

_VERBS = [*data.VERBS, *segment.VERBS, *training.VERBS, *head.VERBS, *evaluation.VERBS, *explain.VERBS,
          *features.VERBS, *deploy.VERBS]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, one sub-command per verb."""
    parser = Parser(prog="lungscope", description="Explainable chest X-ray screening.")
    parser.add_argument("--version", action="version", version=f"lungscope {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)
    sub.required = True
    for add in _VERBS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    if isinstance(sys.stdout, io.TextIOWrapper):  # a file name that is not UTF-8 is printed escaped, not a crash
        sys.stdout.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    # pydicom warns of each departure from the standard it reads past (a malformed value, an undeclared VR), with
    # its source line; the file is then read, or refused with its reason, which is what the user needs to see
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
    try:
        return args.func(args)
    except LungscopeError as error:
        print(f"lungscope {args.verb}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:  # the machine's doing, not lungscope's: a full disk, a folder made read-only meanwhile
        where = f"{error.filename}: " if error.filename else ""
        print(f"lungscope {args.verb}: error: {where}{error.strerror or error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"lungscope {args.verb}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED

