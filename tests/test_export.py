"""Exported models give PyTorch's outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from lungscope.errors import ConfigError
from lungscope.export import export_model
from lungscope.inference import Classifier


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch_at_any_batch_size(quick_run: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"model.{fmt}"
    assert export_model(quick_run, fmt, out) < 1e-4
    classifier = Classifier.load(quick_run)
    batch = torch.randn(5, 1, classifier.image_size, classifier.image_size)
    with torch.inference_mode():
        expected = classifier.model(batch).numpy()
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = session.run(None, {"image": batch.numpy()})[0]
    else:
        got = torch.jit.load(str(out))(batch).detach().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_unknown_format(quick_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="onnx, torchscript"):
        export_model(quick_run, "tflite", tmp_path / "m")
