"""What every verb module shares: exit codes, the parser class, JSON output, warnings printed as one line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lungscope.bundled import MODELS, TASKS
from lungscope.data.labels import LABEL_SCHEMES
from lungscope.data.naming import output_problem

EXIT_OK, EXIT_USAGE, EXIT_PARTIAL, EXIT_INTERRUPTED = 0, 1, 2, 130


class Parser(argparse.ArgumentParser):
    """argparse exits 2 on a usage error; lungscope keeps 2 for "some files could not be read".

    argparse %-formats every ``help=`` (write ``95%%``) but a ``description`` only when it holds ``%(prog)s``
    (write ``95%``); tests/test_cli_contract.py renders every help to keep both right.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deferred: list[Callable[[], None]] = []

    def defer(self, add: Callable[[], None]) -> None:
        """Run ``add`` (which adds arguments) only when this parser parses or shows its help: flags whose choices or
        declarations live in modules that import torch cost nothing to the verbs that do not use them."""
        self._deferred.append(add)

    def _complete(self) -> None:
        while self._deferred:
            self._deferred.pop(0)()

    def parse_known_args(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        self._complete()
        return super().parse_known_args(*args, **kwargs)

    def format_help(self) -> str:
        self._complete()
        return super().format_help()

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")

MODEL_HELP = "run folder (or its best.pt), or a bundled model: " + ", ".join(f"{n} ({TASKS[n]})" for n in MODELS)


def _output(text: str, folder: bool) -> Path:
    if (problem := output_problem(text, folder=folder)) is not None:
        raise argparse.ArgumentTypeError(f"{text}: {problem}")
    return Path(text)


def output_file(text: str) -> Path:
    """argparse type of an output file: refused at once (one line) when it could not be written after the work."""
    return _output(text, folder=False)


def output_folder(text: str) -> Path:
    """argparse type of an output folder, as :func:`output_file`."""
    return _output(text, folder=True)


def whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """argparse type of a whole number from ``low`` (to ``high``): a batch size, a thread count, a port."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {low} or more, not {value}" if high is None
                                             else f"must be within {low}-{high}, not {value}")
        return value

    return parse


def write_json(data: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


@contextlib.contextmanager
def printed_warnings(verb: str) -> Iterator[None]:
    """Warnings raised inside print as one ``lungscope VERB: warning: ...`` line each, without a source line."""
    with warnings.catch_warnings():  # restores warnings.showwarning on exit
        warnings.showwarning = lambda message, *_: print(f"lungscope {verb}: warning: {message}", file=sys.stderr)
        yield


def report_skipped(verb: str, failures: list[dict[str, str]]) -> None:
    """One ``lungscope VERB: skipped PATH: REASON`` line on stderr per file that could not be used."""
    for failure in failures:
        print(f"lungscope {verb}: skipped {failure['path']}: {failure['error']}", file=sys.stderr)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--site``, ``--tta``, ``--ensemble``: how a verb that answers with a model's probabilities builds it."""
    parser.add_argument("--site", metavar="NAME", help="use the operating point fitted for this site by "
                        "`lungscope calibrate MODEL --data DIR --site NAME` (default: the model's own)")
    parser.add_argument("--tta", type=int, default=1, metavar="N",
                        help="test-time augmentation: average N views of each image (default 1: off; at most "
                        "lungscope.inference.TTA_VIEWS); the spread across views is reported as the answer's "
                        "uncertainty")
    parser.add_argument("--ensemble", nargs="+", default=[], metavar="MODEL", help="further models (same classes "
                        "and preprocessing) whose calibrated probabilities are averaged with the model's")


def load_model(args: argparse.Namespace, source: str | os.PathLike[str]) -> Any:
    """The Classifier a verb answers with: ``source`` with ``--roi``, ``--site``, ``--tta`` and ``--ensemble``."""
    from lungscope.sites import load_classifier

    with printed_warnings(args.verb):
        roi = getattr(args, "roi", None)
        classifier = load_classifier(source, site=args.site, roi=roi)
        classifier.set_tta(args.tta)
        if args.ensemble:
            classifier.add_members([load_classifier(m, site=args.site, roi=roi) for m in args.ensemble])
    return classifier


def add_labels_option(parser: argparse.ArgumentParser, help_text: str, default: str | None = None) -> None:
    """``--labels``: one of lungscope.data.labels' schemes; the help ends with ``default`` where one is given."""
    text = help_text if default is None else f"{help_text} (default: {default})"
    parser.add_argument("--labels", choices=list(LABEL_SCHEMES), default=default, help=text)


def add_roi_option(parser: Parser) -> None:
    """``--roi``: the region of interest a trained model's inputs are cropped to, overriding its own."""

    def add() -> None:
        from lungscope.data.transforms import ROI_CHOICES

        parser.add_argument("--roi", choices=ROI_CHOICES, help="crop inputs to the lungs, or not (default: as the "
                            "model was trained; another choice is warned about)")

    parser.defer(add)


def add_explain_methods(parser: Parser, flag: str, metavar: str, help_text: str, *, show_default: bool = False) -> None:
    """``flag``: one or more of lungscope.explain's methods (imported, with torch and Captum, only when the parser
    is used), checked before any work; ``help_text`` may name them with ``%(choices)s``, and ends with the default
    method where ``show_default``."""

    def add() -> None:
        from lungscope.explain.base import DEFAULT_METHOD, METHODS

        text = f"{help_text} (default {DEFAULT_METHOD})" if show_default else help_text
        parser.add_argument(flag, nargs="+", action="extend", choices=list(METHODS), metavar=metavar, help=text)

    parser.defer(add)
