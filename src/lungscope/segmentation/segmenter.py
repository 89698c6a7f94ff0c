"""A trained lung segmenter: any 2-D X-ray in, a clean boolean lung mask at the X-ray's own resolution out."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from lungscope.bundled import SEGMENTER
from lungscope.checkpoint import BEST, load_checkpoint
from lungscope.data.transforms import PerImageStandardize
from lungscope.models import create_model
from lungscope.segmentation.masks import clean_mask

DEFAULT_SEGMENTER = SEGMENTER
MEAN, STD = 0.5, 0.25  # the classifiers' normalisation: [0, 1] -> about [-2, 2]


def resized(images: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """2-D images as one float ``(N, 1, size, size)`` batch, squashed with antialiased bilinear resizing."""
    return torch.cat([F.interpolate(torch.as_tensor(np.asarray(image), dtype=torch.float32)[None, None],
                                    size=(size, size), mode="bilinear", antialias=True, align_corners=False)
                      for image in images])


def normalise(batch: torch.Tensor, how: str = "fixed") -> torch.Tensor:
    """A [0, 1] batch as the network's input: ``"fixed"`` ``(x - MEAN) / STD``, or ``"per-image"`` each image by its
    own mean and standard deviation (as ``lungscope-cxr``, whose encoder a ``cxr-unet`` starts from, saw X-rays)."""
    return (batch - MEAN) / STD if how == "fixed" else PerImageStandardize()(batch)


class LungSegmenter:
    """A lung U-Net with its input size and normalisation. Build with :meth:`load`; ``threshold`` applies to the lung
    probability."""

    def __init__(self, model: nn.Module, input_size: int, info: dict[str, Any] | None = None,
                 threshold: float = 0.5, normalisation: str = "fixed") -> None:
        self.model = model.eval()
        self.input_size = input_size
        self.info = info or {}
        self.threshold = threshold
        self.normalisation = normalisation

    @classmethod
    def load(cls, source: str | os.PathLike[str] = "default") -> LungSegmenter:
        """From a checkpoint written by :func:`lungscope.training.segmenter.train_segmenter` (or its run folder's
        ``best.pt``), or ``"default"``: the bundled lung U-Net. Loaded with ``weights_only=True``."""
        path = DEFAULT_SEGMENTER if str(source) == "default" else Path(source)
        state = load_checkpoint(path / BEST if path.is_dir() else path, kind="segmenter")
        model = create_model(state["model_name"], num_classes=1, **state.get("model_options", {}))
        model.load_state_dict(state["model"])
        info = {k: v for k, v in state.items() if k != "model"}
        # Before checkpoint version 3 every segmenter was normalised "fixed" (checkpoint.SINCE).
        return cls(model, int(state["image_size"]), info, normalisation=state.get("normalise", "fixed"))

    @torch.inference_mode()
    def probabilities(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per-pixel lung probability of each 2-D float [0, 1] image, at that image's resolution."""
        if not images:
            return []
        logits = self.model(normalise(resized(images, self.input_size), self.normalisation))
        return [F.interpolate(logit[None], size=np.shape(image), mode="bilinear", align_corners=False)[0, 0]
                .sigmoid().numpy() for logit, image in zip(logits, images)]

    def masks(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Boolean lung masks: probability >= ``threshold``, then the two largest regions with holes filled."""
        return [clean_mask(p >= self.threshold) for p in self.probabilities(images)]

    def mask(self, image: np.ndarray) -> np.ndarray:
        """The boolean lung mask of one image."""
        return self.masks([image])[0]


@lru_cache(maxsize=4)
def cached_segmenter(source: str = "default") -> LungSegmenter:
    """One segmenter per source and process: preprocessing steps built per image share its weights."""
    return LungSegmenter.load(source)

