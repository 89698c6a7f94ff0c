"""What every verb module shares: exit codes, the parser class, JSON output, warnings printed as one line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from lungscope.bundled import MODELS, TASKS

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


def add_roi_option(parser: argparse.ArgumentParser) -> None:
    """``--roi``: the region of interest a trained model's inputs are cropped to, overriding its own."""
    parser.add_argument("--roi", choices=["none", "lungs"], help="crop inputs to the lungs, or not (default: as the "
                        "model was trained; another choice is warned about)")


class ExplainMethods(Sequence[str]):
    """The names of :data:`lungscope.explain.METHODS`, as argparse ``choices``: imported (with torch and Captum) only
    when a method is given or a verb's help is shown, so that the parser itself stays fast to build."""

    @staticmethod
    def _names() -> list[str]:
        from lungscope.explain import METHODS

        return list(METHODS)

    def __getitem__(self, index: int) -> str:  # type: ignore[override]
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())


def add_explain_methods(parser: argparse.ArgumentParser, flag: str, metavar: str, help_text: str) -> None:
    """``flag``: one or more explanation methods, checked against lungscope.explain's names before any work;
    ``help_text`` may name them with ``%(choices)s``."""
    parser.add_argument(flag, nargs="+", action="extend", choices=ExplainMethods(), metavar=metavar, help=help_text)
