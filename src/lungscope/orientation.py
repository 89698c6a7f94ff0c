"""Is an X-ray upright and in its usual grey scale? A small CNN that lungscope trains on the shared X-rays, each shown
in one of eight :data:`ORIENTATIONS` (turned by quarter turns, and inverted or not), tells which one an image is in.

The classifiers answer a sideways, upside-down or negative X-ray as if it were upright, and mostly wrongly (of the 129
normal children among the check's held-out X-rays, the default model called 90-98% pneumonia when turned a quarter,
64% when inverted): such an image is refused with what to do about it (:func:`read_upright`). A mirrored X-ray is not
checked (it looks upright; the classifiers answer it as they answer the original). Results:
``benchmarks/results/orientation.md``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lungscope.bundled import ORIENTATION
from lungscope.checkpoint import BEST, load_checkpoint
from lungscope.data.io import XRay, read_image
from lungscope.data.plausibility import ImplausibleImageError
from lungscope.models import create_model
from lungscope.segmentation.segmenter import normalise, resized

# (anticlockwise quarter turns, inverted): index 0 is the X-ray as it should be.
ORIENTATIONS: tuple[tuple[int, bool], ...] = tuple((turns, inverted) for inverted in (False, True)
                                              for turns in range(4))
REFUSE_AT = 0.9  # the probability of one wrong orientation at which an image is refused
_TURNED = {1: "turned a quarter anticlockwise", 2: "upside down", 3: "turned a quarter clockwise"}
_FIX = {1: "turn it a quarter clockwise", 2: "turn it half round", 3: "turn it a quarter anticlockwise"}


def orient(image: torch.Tensor, index: int) -> torch.Tensor:
    """``image`` (``(..., H, W)`` in [0, 1]) shown in orientation ``index`` of :data:`ORIENTATIONS`."""
    turns, inverted = ORIENTATIONS[index]
    turned = torch.rot90(image, turns, dims=(-2, -1))
    return 1 - turned if inverted else turned


def describe(index: int) -> str:
    """What is wrong with an image in orientation ``index`` (not 0) and what to do about it."""
    turns, inverted = ORIENTATIONS[index]
    looks = " and ".join([*([_TURNED[turns]] if turns else []), *(["a negative (lungs bright)"] if inverted else [])])
    fixes = " and ".join([*([_FIX[turns]] if turns else []), *(["invert its grey scale"] if inverted else [])])
    return f"it looks {looks}; {fixes}"


def refused(probabilities: np.ndarray) -> np.ndarray:
    """The refusal rule, on orientation probabilities (last axis: the eight :data:`ORIENTATIONS`): refused where the
    most probable orientation is a wrong one with probability :data:`REFUSE_AT` or more."""
    return (probabilities.argmax(axis=-1) != 0) & (probabilities.max(axis=-1) >= REFUSE_AT)


class OrientationCheck:
    """The orientation network with its input size. Build with :meth:`load`."""

    def __init__(self, model: nn.Module, input_size: int, info: dict[str, Any] | None = None) -> None:
        self.model = model.eval()
        self.input_size = input_size
        self.info = info or {}

    @classmethod
    def load(cls, source: str | os.PathLike[str] = "default") -> OrientationCheck:
        """From a checkpoint of :func:`lungscope.training.orientation.train_orientation` (or its run folder), or
        ``"default"``: the bundled one. Loaded with ``weights_only=True``."""
        path = ORIENTATION if str(source) == "default" else Path(source)
        state = load_checkpoint(path / BEST if path.is_dir() else path, kind="orientation check")
        model = create_model(state["model_name"], num_classes=len(ORIENTATIONS))
        model.load_state_dict(state["model"])
        return cls(model, int(state["image_size"]), {k: v for k, v in state.items() if k != "model"})

    @torch.inference_mode()
    def probabilities(self, images: list[np.ndarray]) -> np.ndarray:
        """``(N, 8)``: the probability of each orientation for each 2-D float [0, 1] image."""
        logits = self.model(normalise(resized(images, self.input_size)))
        return torch.softmax(logits, dim=1).numpy()

    def problem(self, pixels: np.ndarray) -> str | None:
        """Why the image is refused (a wrong orientation at :data:`REFUSE_AT` or above), or None."""
        probabilities = self.probabilities([pixels])[0]
        if not refused(probabilities):
            return None
        index = int(probabilities.argmax())
        return f"{describe(index)} (orientation check {probabilities[index]:.2f})"


@lru_cache(maxsize=1)
def default_check() -> OrientationCheck:
    """The bundled orientation check, loaded once per process."""
    return OrientationCheck.load()


def read_upright(path: str | os.PathLike[str]) -> XRay:
    """:func:`~lungscope.data.io.read_image`, then the bundled orientation check: an X-ray that is sideways, upside
    down or a negative raises :class:`~lungscope.data.plausibility.ImplausibleImageError` saying how to right it."""
    xray = read_image(path)
    if (reason := default_check().problem(xray.pixels)) is not None:
        raise ImplausibleImageError(str(path), reason)
    return xray
