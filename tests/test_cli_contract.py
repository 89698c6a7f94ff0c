"""The CLI's contract: every verb has a handler and a help that renders, and every command in README.md parses."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from lungscope.cli import build_parser, main

README = Path(__file__).resolve().parents[1] / "README.md"


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _readme_commands() -> list[list[str]]:
    """The arguments of every ``lungscope ...`` (or ``... -m lungscope.cli ...``) line of README's shell blocks."""
    blocks = re.findall(r"^```(?:console|bash)\n(.*?)^```", README.read_text(), flags=re.MULTILINE | re.DOTALL)
    commands = []
    for line in "\n".join(blocks).splitlines():
        words = shlex.split(line.removeprefix("$ "), comments=True)
        if words[:1] == ["lungscope"]:
            commands.append(words[1:])
        elif "lungscope.cli" in words:
            commands.append(words[words.index("lungscope.cli") + 1:])
    return commands


def test_every_verb_has_a_handler() -> None:
    missing = [verb for verb, parser in _subparsers().items() if not callable(parser.get_default("func"))]
    assert missing == []


@pytest.mark.parametrize("argv", [["--help"], ["-h"], *([verb, "--help"] for verb in sorted(_subparsers()))],
                         ids=" ".join)
def test_help_renders(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: lungscope")
    assert "%%" not in out  # a description is not %-formatted by argparse: it takes a plain %


def test_readme_has_commands() -> None:
    verbs = {argv[0] for argv in _readme_commands()}
    assert {"predict", "serve", "export", "train", "evaluate", "explain", "segment"} <= verbs


@pytest.mark.parametrize("argv", _readme_commands(), ids=" ".join)
def test_readme_command_parses(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)  # a usage error exits 1
    assert args.verb == argv[0]
