"""The command line: one-line errors, the audit end to end (help and handlers: test_cli_contract.py)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lungscope.bundled import MODELS
from lungscope.cli import main
from lungscope.segmentation.segmenter import DEFAULT_SEGMENTER

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


def test_explain_without_an_image_says_how_to_give_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "default", "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.strip() == ("lungscope explain: error: no image to explain: lungscope explain "
                                               "RUN_DIR PATH ..., or --model MODEL PATH ...")
    assert not (tmp_path / "out").exists()


class _Crafted:
    """Unpickled, it would make the folder ``marker``: what a checkpoint with code in it could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lungscope.cli", *argv], capture_output=True, text=True, check=False)


NOT_PYTORCH = "not a lungscope checkpoint (not a PyTorch archive: another kind of file, or a truncated one)"


@pytest.mark.parametrize(("case", "verb", "reason"), [
    ("image.jpeg", "predict", NOT_PYTORCH),
    ("notes.txt", "predict", NOT_PYTORCH),
    ("truncated.pt", "predict", NOT_PYTORCH),
    ("crafted.pt", "predict", ("not a lungscope checkpoint (it holds objects other than tensors and plain values, "
                                "refused: loading them could run code)")),
    ("lung-unet.pt", "predict", ("a lung segmenter checkpoint (for lungscope segment --model), not a classifier "
                                  "checkpoint")),
    ("pneumonia.pt", "segment", ("a classifier checkpoint (for lungscope predict, evaluate, explain, features, "
                                  "serve, export), not a lung segmenter checkpoint")),
], ids=["jpeg", "text", "truncated", "crafted-pickle", "segmenter-to-predict", "classifier-to-segment"])
def test_foreign_checkpoint_is_one_line_error(case: str, verb: str, reason: str, tmp_path: Path) -> None:
    model = tmp_path / case
    marker = tmp_path / "code-ran"
    makers = {
        "image.jpeg": lambda: shutil.copy(next((REPO / "samples" / "NORMAL").iterdir()), model),
        "notes.txt": lambda: model.write_text("lr: 0.001\n"),
        "truncated.pt": lambda: model.write_bytes(MODELS["default"].read_bytes()[:4096]),
        "crafted.pt": lambda: torch.save({"model": _Crafted(marker)}, model),
        "lung-unet.pt": lambda: shutil.copy(DEFAULT_SEGMENTER, model),
        "pneumonia.pt": lambda: shutil.copy(MODELS["default"], model),
    }
    makers[case]()
    result = _cli(verb, SAMPLES, "--model", str(model), "--out", str(tmp_path / "out"))
    assert (result.returncode, result.stderr) == (1, f"lungscope {verb}: error: {model}: {reason}\n")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_serve_on_a_busy_port_is_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert main(["serve", "--host", "127.0.0.1", "--port", str(port)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing announced
    assert captured.err == f"lungscope serve: error: port {port} on 127.0.0.1 is in use; pass --port\n"
