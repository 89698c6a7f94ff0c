"""Feature vectors of X-ray files: the input of a model's final Linear, or any named layer's output."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lungscope.bundled import bundled_model
from lungscope.errors import ConfigError
from lungscope.inference import Classifier
from lungscope.models.features import features_at, recorded_layer
from lungscope.progress import progress_bar


def model_source(model: str | os.PathLike[str]) -> str:
    """A bundled model's name (``"default"``, ``"tb"``), or the absolute path of a run folder or checkpoint: what the
    features file records and what a Spark worker loads, whatever its working folder."""
    return str(model) if bundled_model(model) else str(Path(model).absolute())


class FeatureExtractor:
    """A :class:`Classifier`'s model read at one layer (see :func:`~lungscope.models.features.features_at`: the
    two-stage model's backbone reads it the same way), with the run's preprocessing.

    ``layer`` is the name recorded in the features file and ``feature_dim`` the length of each vector.
    """

    def __init__(self, classifier: Classifier, layer: str | None = None, *, batch_size: int = 32) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch size must be positive, not {batch_size}")
        self.classifier = classifier
        self.batch_size = batch_size
        self.layer = recorded_layer(classifier.model, layer)
        blank = classifier.transform(np.zeros((classifier.image_size, classifier.image_size), np.float32))
        # a copy: the cut replaces layers, and the classifier's model stays whole
        backbone, self.feature_dim = features_at(copy.deepcopy(classifier.model).eval(), layer, blank[None])
        self.backbone = backbone.eval()

    @torch.inference_mode()
    def vectors(self, batch: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` float32 features of a batch of model inputs."""
        return self.backbone(batch).float().cpu()

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
