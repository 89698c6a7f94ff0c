"""Exported models give PyTorch's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pandas as pd
import pytest
import torch
from scipy.special import softmax

from lungscope.cli import main
from lungscope.data.io import read_image
from lungscope.data.transforms import build_preprocess
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


def test_onnx_export_carries_what_predict_applies(quick_run: Path, tmp_path: Path) -> None:
    """`lungscope export RUN --format onnx --out FILE`, run by ONNX Runtime on real X-rays with the preprocessing,
    calibration and threshold its metadata gives, makes predict's calls with predict's probabilities."""
    out, rows_json = tmp_path / "model.onnx", tmp_path / "rows.json"
    assert main(["export", str(quick_run), "--format", "onnx", "--out", str(out)]) == 0
    split = pd.read_csv(quick_run / "split.csv")
    paths = split.loc[split["split"] == "test", "path"].head(16).tolist()
    assert main(["predict", *paths, "--model", str(quick_run), "--json", str(rows_json)]) == 0
    rows = json.loads(rows_json.read_text())

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = {key: json.loads(value) for key, value in session.get_modelmeta().custom_metadata_map.items()}
    best = torch.load(quick_run / "best.pt", weights_only=True)
    assert meta["lungscope.classes"] == best["classes"] == ["NORMAL", "PNEUMONIA"]
    assert meta["lungscope.threshold"] == best["operating_point"]["threshold_calibrated"]
    assert meta["lungscope.calibration"] == {"temperature": best["operating_point"]["temperature"],
                                             "bias": best["operating_point"]["bias"]}
    pre = meta["lungscope.preprocessing"]
    assert pre == {"image_size": best["image_size"], "resize": "squash", "clahe": False, "roi": "none",
                   "roi_margin": 0.05, "normalise": "fixed", "mean": 0.5, "std": 0.25}

    preprocess = build_preprocess(pre["image_size"], resize=pre["resize"], clahe=pre["clahe"], roi=pre["roi"],
                                  roi_margin=pre["roi_margin"])
    batch = np.stack([(preprocess(read_image(p).pixels).numpy() - pre["mean"]) / pre["std"] for p in paths])
    logits = session.run(None, {"image": batch.astype(np.float32)})[0]
    calibration = meta["lungscope.calibration"]
    probability = softmax(logits / calibration["temperature"] + np.asarray(calibration["bias"]), axis=1)[:, 1]
    decisions = [meta["lungscope.classes"][int(p >= meta["lungscope.threshold"])] for p in probability]
    assert [row["path"] for row in rows] == paths
    np.testing.assert_allclose(probability, [row["probability"] for row in rows], atol=2e-6)
    assert decisions == [row["prediction"] for row in rows]
    assert len(set(decisions)) == 2  # both classes are called: the threshold is exercised
