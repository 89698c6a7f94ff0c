"""The command line: one-line errors, the audit end to end (help and handlers: test_cli_contract.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lungscope.cli import main

REPO = Path(__file__).resolve().parents[1]


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
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "nowhere" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_usage_error_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", "--no-such-flag"])
    assert exit_info.value.code == 1


SAMPLES = str(REPO / "samples")


@pytest.mark.parametrize("argv", [
    ["predict", SAMPLES, "--explain", "grad-cam", "--out", "OUT"],
    ["explain", "default", SAMPLES, "--method", "gradcam", "grad-cam", "--out", "OUT"],
    ["explain-check", "default", "--data", SAMPLES, "--method", "grad-cam", "--json", "OUT/trust.json"],
], ids=lambda argv: argv[0])
def test_unknown_explain_method_is_refused_before_any_work(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main([word.replace("OUT", str(out)) for word in argv])
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "invalid choice: 'grad-cam' (choose from 'gradcam', 'guided-backprop', " in captured.err
    assert not out.exists()
