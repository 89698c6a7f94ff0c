"""The command line: help for every verb, one-line errors, the audit end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lungscope.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


def _verbs() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "verb")
    return sorted(sub.choices)


@pytest.mark.parametrize("verb", _verbs())
def test_every_verb_has_help(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([verb, "--help"])
    assert exit_info.value.code == 0
    assert "usage: lungscope" in capsys.readouterr().out


def test_audit_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "audit.json"
    assert main(["audit", str(REPO / "samples"), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["splits"]["samples"]["classes"] == {"NORMAL": 3, "PNEUMONIA": 4}
    assert set(report) >= {"n_images", "splits", "unreadable", "duplicates", "leaked_patients", "sizes", "modes"}
    assert "samples" in capsys.readouterr().out


def test_missing_folder_is_one_line_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lungscope.cli", "audit", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "nowhere" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_usage_error_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", "--no-such-flag"])
    assert exit_info.value.code == 1
