"""Exporting a trained model to ONNX or TorchScript, checked against PyTorch on the same inputs.

An ONNX file also carries what a runtime needs around the graph, as JSON strings in its ``metadata_props``:

- ``lungscope.classes``: the class names, in the order of the logits.
- ``lungscope.threshold``: the operating threshold on the calibrated probability of class 1 (null: decide by the
  most probable class).
- ``lungscope.calibration``: ``{"temperature": T, "bias": [b0, b1, ...] or null}``; the calibrated probabilities are
  ``softmax(logits / T + bias)``.
- ``lungscope.preprocessing``: ``{"image_size", "resize" ("squash" or "pad"), "clahe", "roi" ("none" or "lungs"),
  "roi_margin", "normalise" ("fixed" or "per-image"), "mean", "std"}``: a [0, 1] grayscale image, cropped to the
  lungs (roi), equalised (clahe), resized to ``image_size`` squared (antialiased bilinear), then ``(x - mean) / std``
  ("fixed") or standardised by the image's own mean and standard deviation ("per-image").
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.transforms import v2

from lungscope.data.transforms import build_augment_normalise
from lungscope.errors import ConfigError
from lungscope.inference import Classifier

FORMATS = ("onnx", "torchscript")


def onnx_metadata(classifier: Classifier) -> dict[str, str]:
    """The ``metadata_props`` of an exported classifier: JSON values under the keys the module docstring lists."""
    normalise = next(step for step in build_augment_normalise(train=False).transforms if isinstance(step, v2.Normalize))
    values: dict[str, Any] = {
        "classes": classifier.classes,
        "threshold": classifier.threshold,
        "calibration": {"temperature": classifier.temperature, "bias": classifier.bias},
        # "normalise": "fixed" is (x - mean) / std; "per-image" standardises each image by its own mean and std.
        "preprocessing": {**classifier.preprocessing.to_dict(),
                          "mean": float(normalise.mean[0]), "std": float(normalise.std[0])},
    }
    return {f"lungscope.{key}": json.dumps(value) for key, value in values.items()}


def _example(classifier: Classifier, batch: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, 1, classifier.image_size, classifier.image_size, generator=generator)


def export_model(
    source: str | os.PathLike[str], fmt: str, out: str | os.PathLike[str], *, tolerance: float = 1e-4
) -> float:
    """Write the run's (or checkpoint's) model as ``fmt`` to ``out``; returns the largest absolute difference of its
    logits from PyTorch's on random inputs, and raises ConfigError above ``tolerance``.

    The exported graph takes a normalised float32 batch ``(N, 1, S, S)`` and returns logits; an ONNX file records the
    preprocessing, the calibration and the threshold in its metadata (see the module docstring). A model trained with
    ``roi: lungs`` expects lung-cropped inputs, a crop the graph does not contain: a warning says so.
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
        _add_metadata(out, onnx_metadata(classifier))
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: example.numpy()})[0]
    difference = float(np.abs(got - expected).max())
    if difference > tolerance:
        raise ConfigError(f"{out}: exported outputs differ from PyTorch's by {difference:.2e} (> {tolerance:.0e})")
    return difference



def _add_metadata(path: Path, metadata: dict[str, str]) -> None:
    import onnx

    graph = onnx.load(str(path))
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))
