"""Exporting a trained model to ONNX or TorchScript, checked against PyTorch on the same inputs."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from lungscope.errors import ConfigError
from lungscope.inference import Classifier

FORMATS = ("onnx", "torchscript")


def _example(classifier: Classifier, batch: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, 1, classifier.image_size, classifier.image_size, generator=generator)


def export_model(
    source: str | os.PathLike[str], fmt: str, out: str | os.PathLike[str], *, tolerance: float = 1e-4
) -> float:
    """Write the run's (or checkpoint's) model as ``fmt`` to ``out``; returns the largest absolute difference of its
    logits from PyTorch's on random inputs, and raises ConfigError above ``tolerance``.

    The exported graph takes a normalised float32 batch ``(N, 1, S, S)`` and returns logits; preprocessing, the
    temperature and the threshold stay in lungscope (they are in ``best.pt`` and ``calibration.json``). A model trained
    with ``roi: lungs`` expects lung-cropped inputs, a crop the graph does not contain: a warning says so.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    classifier = Classifier.load(source)
    if classifier.roi is not None:
        warnings.warn("the model was trained on lung crops (roi: lungs): crop its inputs with lungscope's segmenter "
                      "before the exported graph", stacklevel=2)
    model, example = classifier.model.eval(), _example(classifier)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        expected = model(example).numpy()
    if fmt == "torchscript":
        with torch.no_grad():
            torch.jit.save(torch.jit.trace(model, example), str(out))
        with torch.inference_mode():
            got = torch.jit.load(str(out))(example).numpy()
    else:
        import onnxruntime

        batch = torch.export.Dim("batch", min=1)
        torch.onnx.export(
            model, (example,), str(out), input_names=["image"], output_names=["logits"],
            dynamic_shapes=({0: batch},), dynamo=True, external_data=False, verbose=False,
        )
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: example.numpy()})[0]
    difference = float(np.abs(got - expected).max())
    if difference > tolerance:
        raise ConfigError(f"{out}: exported outputs differ from PyTorch's by {difference:.2e} (> {tolerance:.0e})")
    return difference

