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


@pytest.mark.parametrize(("argv", "flag", "reason"), [
    (["predict", "SAMPLES", "--csv", "FOLDER"], "--csv", "is a folder; give a file name"),
    (["predict", "SAMPLES", "--json", "FILE/rows.json"], "--json", "cannot be made: FILE is a file, not a folder"),
    (["predict", "SAMPLES", "--html", "--out", "FILE"], "--out", "is a file, not a folder"),
    (["evaluate", "default", "--data", "SAMPLES", "--json", "FOLDER"], "--json", "is a folder; give a file name"),
    (["explain", "default", "SAMPLES", "--out", "FILE"], "--out", "is a file, not a folder"),
    (["segment", "SAMPLES", "--out", "FILE/masks"], "--out", "cannot be made: FILE is a file, not a folder"),
    (["audit", "SAMPLES", "--json", "FOLDER"], "--json", "is a folder; give a file name"),
], ids=lambda value: value[0] if isinstance(value, list) else None)
def test_an_output_that_cannot_be_written_is_refused_before_any_work(
    argv: list[str], flag: str, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Else the run would end, its work done, unable to write it (a traceback, before)."""
    (folder := tmp_path / "folder").mkdir()
    (file := tmp_path / "file").write_text("not a folder")
    names = {"SAMPLES": str(REPO / "samples"), "FOLDER": str(folder), "FILE": str(file)}
    argv = [names.get(word) or word.replace("FILE", str(file)) for word in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    given = next(word for word in argv if word.startswith(str(tmp_path)))
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == f"lungscope {argv[0]}: error: argument {flag}: {given}: " + reason.replace("FILE", str(file))
    assert sorted(tmp_path.iterdir()) == [file, folder] and not any(folder.iterdir())


@pytest.mark.parametrize(("flag", "value", "reason"), [
    ("--workers", "0", "must be 1 or more, not 0"), ("--batch-size", "-2", "must be 1 or more, not -2"),
    ("--workers", "two", "expected a whole number, got 'two'"),
])
def test_counts_are_checked_at_the_edge(flag: str, value: str, reason: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["predict", str(REPO / "samples"), flag, value])
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"lungscope predict: error: argument {flag}: {reason}"


def test_an_unknown_colormap_is_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "maps"
    assert main(["explain", "default", str(REPO / "samples"), "--out", str(out), "--cmap", "jett"]) == 1
    assert capsys.readouterr().err.strip() == ("lungscope explain: error: unknown colormap 'jett'; matplotlib's, "
                                               "e.g. jet, viridis, RdBu_r")
    assert not out.exists()


def test_a_failing_disk_is_one_line_not_a_traceback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import lungscope.predict

    def full(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device", str(tmp_path / "rows.csv"))

    monkeypatch.setattr(lungscope.predict, "predict_to_files", full)
    assert main(["predict", str(REPO / "samples"), "--csv", str(tmp_path / "rows.csv")]) == 1
    expected = f"lungscope predict: error: {tmp_path / 'rows.csv'}: No space left on device"
    assert capsys.readouterr().err.strip() == expected


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
