"""Feature vectors of X-ray files: the input of a model's final Linear, or any named layer's output."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lungscope.bundled import bundled_model
from lungscope.errors import ConfigError
from lungscope.inference import Classifier
from lungscope.models.layers import named_classifier_head
from lungscope.progress import progress_bar

PENULTIMATE = "input"  # the suffix recorded for the default layer: "<final Linear's name>:input"


def model_source(model: str | os.PathLike[str]) -> str:
    """A bundled model's name (``"default"``, ``"tb"``), or the absolute path of a run folder or checkpoint: what the
    features file records and what a Spark worker loads, whatever its working folder."""
    return str(model) if bundled_model(model) else str(Path(model).absolute())


def feature_layer(model: nn.Module, layer: str | None = None) -> tuple[str, nn.Module, bool]:
    """``(recorded name, module, whether its input is taken)``: the final Linear's input by default, else the output
    of the module named as in ``named_modules``; an unknown name raises ConfigError listing the valid ones."""
    if layer is None:
        name, head = named_classifier_head(model)
        return f"{name}:{PENULTIMATE}", head, True
    names = [name for name, _ in model.named_modules() if name]
    if layer not in names:
        raise ConfigError(f"{type(model).__name__} has no layer {layer!r}; its layers are: {', '.join(names)}")
    return layer, model.get_submodule(layer), False


def _vectors(value: Any) -> torch.Tensor:
    """``(N, D)`` float32 of a layer's input or output: 4-D maps globally average-pooled, anything else flattened."""
    tensor = value[0] if isinstance(value, tuple) else value
    if not isinstance(tensor, torch.Tensor):
        raise ConfigError(f"the layer gives a {type(tensor).__name__}, not a tensor: pick another layer")
    if tensor.ndim == 4:
        tensor = tensor.mean(dim=(2, 3))
    return tensor.flatten(1).float().cpu()


class FeatureExtractor:
    """A :class:`Classifier`'s model read at one layer (see :func:`feature_layer`), with the run's preprocessing.

    ``layer`` is the name recorded in the features file and ``feature_dim`` the length of each vector.
    """

    def __init__(self, classifier: Classifier, layer: str | None = None, *, batch_size: int = 32) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch size must be positive, not {batch_size}")
        self.classifier = classifier
        self.batch_size = batch_size
        self.layer, self._module, self._takes_input = feature_layer(classifier.model, layer)
        blank = classifier.transform(np.zeros((classifier.image_size, classifier.image_size), np.float32))
        self.feature_dim = int(self.vectors(blank[None]).shape[1])

    @torch.inference_mode()
    def vectors(self, batch: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` features of a batch of model inputs, captured by a hook during one forward pass."""
        captured: list[torch.Tensor] = []
        handle: RemovableHandle
        if self._takes_input:
            handle = self._module.register_forward_pre_hook(lambda _, inputs: captured.append(_vectors(inputs)))
        else:
            handle = self._module.register_forward_hook(lambda _, __, output: captured.append(_vectors(output)))
        try:
            self.classifier.model(batch)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise ConfigError(f"layer {self.layer!r} runs {len(captured)} times per forward pass: pick another layer")
        return captured[0]

    def extract_files(self, paths: Sequence[str], *, workers: int | None = None) -> Iterator[dict[str, Any]]:
        """``{"path", "features", "error"}`` per file, in order: float32 vector and None, or None and why the file
        could not be read (the rest go on). Files decode in threads while the model runs."""
        for results in self.classifier.decoded_batches(paths, batch_size=self.batch_size, workers=workers):
            good = [tensor for _, tensor in results if isinstance(tensor, torch.Tensor)]
            vectors = iter(self.vectors(torch.stack(good)).numpy() if good else [])
            for path, result in results:
                if isinstance(result, str):
                    yield {"path": path, "features": None, "error": result}
                else:
                    yield {"path": path, "features": next(vectors), "error": None}


def local_rows(
    extractor: FeatureExtractor, inputs: pd.DataFrame, *, workers: int | None = None, show: bool | None = None
) -> Iterator[dict[str, Any]]:
    """The feature rows of :func:`~lungscope.features.api.feature_inputs` rows, in order, computed in this process."""
    todo = inputs[inputs["error"].isna()]
    for row in inputs[inputs["error"].notna()].to_dict("records"):
        yield {**row, "features": None}
    with progress_bar(total=len(todo), desc="features", unit="img", show=show) as bar:
        found = extractor.extract_files(todo["path"].tolist(), workers=workers)
        for row, result in zip(todo.to_dict("records"), found):
            bar.update(1)
            yield {**row, **result}
