"""Is an X-ray upright and in its usual grey scale? A small CNN that lungscope trains on the shared X-rays, each shown
in one of eight :data:`ORIENTATIONS` (turned by quarter turns, and inverted or not), tells which one an image is in.

The classifiers answer a sideways, upside-down or negative X-ray as if it were upright, and mostly wrongly (of the 129
normal children among the check's held-out X-rays, the default model called 90-98% pneumonia when turned a quarter,
64% when inverted): such an image is refused with what to do about it (:func:`read_upright`). A mirrored X-ray is not
checked (it looks upright; the classifiers answer it as they answer the original).

The same network refuses pictures that are not chest X-rays (a photograph, a CT or MR slice, a chart, noise), which
the classifiers would otherwise answer: shown in all eight orientations, a chest X-ray has each view told with near
certainty, another picture does not (:func:`recognition`; rotation prediction as an out-of-distribution score,
Hendrycks et al., NeurIPS 2019). Results: ``benchmarks/results/orientation.md``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lungscope.bundled import ORIENTATION
from lungscope.checkpoint import BEST, load_checkpoint
from lungscope.data.io import XRay, read_image
from lungscope.data.plausibility import ImplausibleImageError, check_header
from lungscope.models import create_model
from lungscope.segmentation.segmenter import normalise, resized

# (anticlockwise quarter turns, inverted): index 0 is the X-ray as it should be.
ORIENTATIONS: tuple[tuple[int, bool], ...] = tuple((turns, inverted) for inverted in (False, True)
                                              for turns in range(4))
REFUSE_AT = 0.9  # the probability of one wrong orientation at which an image is refused
# The recognition under which an image is refused as not a chest X-ray: the highest step of 0.05 that refuses none of
# the shared X-rays as stored with a step to spare and at most 1 in 1,000 of the check's validation X-rays changed as
# benchmarks/robustness.py changes them (benchmarks/orientation.py --split).
RECOGNISED_AT = 0.45
NOT_RECOGNISED = "it does not look like a chest X-ray"
# As it is, the probability of upright from which an image is answered without its other views: no picture that is
# not an X-ray passes this way that the eight views would refuse (benchmarks/results/orientation.md)
SURE_UPRIGHT = 0.999
# Uniform bands along an image's edges (rows or columns whose grey levels span at most this) are trimmed before the
# check looks, in training as in use: padding, a frame or a letterbox is not part of the X-ray
BORDER_SPREAD = 0.02
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


def _composed() -> np.ndarray:
    """``[k, j]``: the orientation an image in orientation ``j`` is in once shown in orientation ``k`` (quarter turns
    add up, inversions cancel)."""
    index = {o: i for i, o in enumerate(ORIENTATIONS)}
    return np.array([[index[((turns_k + turns_j) % 4, inverted_k != inverted_j)]
                      for turns_j, inverted_j in ORIENTATIONS] for turns_k, inverted_k in ORIENTATIONS])


_COMPOSED = _composed()


def _kept(uniform: np.ndarray, step: int, size: int) -> slice:
    """The rows (or columns) of a side ``size`` between the leading and trailing runs of ``uniform``, which was judged
    on every ``step``-th of them: a row no judged one shows to be band is kept. Empty when all are uniform."""
    if uniform.all():
        return slice(0, 0)
    first, last = int(np.argmin(uniform)), len(uniform) - int(np.argmin(uniform[::-1]))
    return slice(max(0, (first - 1) * step + 1), min(size, last * step))


def without_borders(image: np.ndarray) -> np.ndarray:
    """A 2-D image without the uniform bands along its edges (rows or columns spanning at most :data:`BORDER_SPREAD`;
    bands inside bands too, as a screen capture nests a viewer's black in a window's grey), as a view; kept whole when
    what is left would be under a quarter of it (an image that blank is refused by its plausibility check).

    Hand-written: Pillow's ``getbbox`` and OpenCV's ``boundingRect`` trim one background grey, while a letterboxed or
    exported X-ray may have bands of different greys on different sides."""
    kept = image
    while True:
        step = max(1, max(kept.shape) // 512)  # judged on a subsample: as uniform in a band, and cheap on a large film
        sample = kept[::step, ::step]
        rows = _kept(np.ptp(sample, axis=1) <= BORDER_SPREAD, step, kept.shape[0])
        cols = _kept(np.ptp(sample, axis=0) <= BORDER_SPREAD, step, kept.shape[1])
        if (rows.stop - rows.start) * (cols.stop - cols.start) < image.size / 4:
            return image
        if (rows.stop - rows.start, cols.stop - cols.start) == kept.shape:
            return kept
        kept = kept[rows, cols]


def prepared(images: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """The check's input, in training as in use: each 2-D [0, 1] image :func:`without_borders`, resized to ``size``
    (``(N, 1, size, size)``)."""
    return resized([without_borders(np.asarray(image)) for image in images], size)


def views(model: nn.Module, batch: torch.Tensor, shown: Sequence[int] = range(len(ORIENTATIONS))) -> np.ndarray:
    """``(N, len(shown), 8)``: for each image of a normalised-size ``(N, 1, S, S)`` [0, 1] batch shown in the
    orientations ``shown`` (axis 1; by default all eight, 0: as it is), the network's probability of each orientation
    (axis 2)."""
    with torch.inference_mode():
        return np.stack([torch.softmax(model(normalise(orient(batch, k))), dim=1).numpy() for k in shown], axis=1)


def recognition(probabilities: np.ndarray) -> np.ndarray:
    """How surely the check tells the orientation of every view of an image, from :func:`views`' ``(..., 8, 8)``:
    ``(..., 8)``, for each orientation the image might be in, the geometric mean of the probabilities given to what
    each view's orientation would then be. Near 1 at a chest X-ray's own orientation; low for a picture whose views
    the check cannot tell apart."""
    logs = np.log(np.clip(probabilities, 1e-12, 1))
    return np.exp(logs[..., np.arange(len(ORIENTATIONS))[:, None], _COMPOSED].mean(axis=-2))


def refused(probabilities: np.ndarray) -> np.ndarray:
    """The refusal rule, on orientation probabilities (last axis: the eight :data:`ORIENTATIONS`): refused where the
    most probable orientation is a wrong one with probability :data:`REFUSE_AT` or more."""
    return (probabilities.argmax(axis=-1) != 0) & (probabilities.max(axis=-1) >= REFUSE_AT)


def reason(probabilities: np.ndarray) -> str | None:
    """Why an image whose :func:`views` are ``probabilities`` (8 x 8) is refused, or None: an image the check is sure
    is upright as it is (:data:`SURE_UPRIGHT`) is answered; another is refused if not recognised as a chest X-ray in
    the orientation it is in or looks to be in (:func:`recognition` under :data:`RECOGNISED_AT`; the reason starts
    with :data:`NOT_RECOGNISED`), or if in a wrong orientation (:func:`refused`)."""
    if probabilities[0, 0] >= SURE_UPRIGHT:
        return None
    turned = bool(refused(probabilities[0]))
    index = int(probabilities[0].argmax()) if turned else 0
    if (score := float(recognition(probabilities)[index])) < RECOGNISED_AT:
        return (f"{NOT_RECOGNISED}: the orientation check cannot tell which way up it is (recognition {score:.2f}, "
                f"under {RECOGNISED_AT})")
    return f"{describe(index)} (orientation check {probabilities[0, index]:.2f})" if turned else None


class OrientationCheck:
    """The orientation network with its input size. Build with :meth:`load`."""

    def __init__(self, model: nn.Module, input_size: int, info: dict[str, Any] | None = None) -> None:
        # channels-last: faster convolutions on CPUs (oneDNN); 8.4 against 6.1 ms per image, one thread, measured
        self.model = model.eval().to(memory_format=torch.channels_last)
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

    def views(self, images: list[np.ndarray]) -> np.ndarray:
        """:func:`views` of 2-D float [0, 1] images (:func:`prepared`): ``(N, 8, 8)``; ``[:, 0]`` is each image's
        own answer."""
        return views(self.model, prepared(images, self.input_size))

    def reasons(self, images: list[np.ndarray]) -> list[str | None]:
        """Why each 2-D float [0, 1] image is refused (:func:`reason`), or None. Each is seen as it is first; only
        those not surely upright are shown in the other seven orientations (one pass instead of eight for nearly
        every chest X-ray)."""
        batch = prepared(images, self.input_size)
        as_is = views(self.model, batch, [0])
        unsure = np.flatnonzero(as_is[:, 0, 0] < SURE_UPRIGHT)
        found: list[str | None] = [None] * len(images)
        if len(unsure):
            others = views(self.model, batch[unsure], range(1, len(ORIENTATIONS)))
            for i, probabilities in zip(unsure, np.concatenate([as_is[unsure], others], axis=1)):
                found[i] = reason(probabilities)
        return found

    def problem(self, pixels: np.ndarray) -> str | None:
        """Why the image is refused (:func:`reason`), or None."""
        return self.reasons([pixels])[0]


@lru_cache(maxsize=1)
def default_check() -> OrientationCheck:
    """The bundled orientation check, loaded once per process."""
    return OrientationCheck.load()


def read_upright(path: str | os.PathLike[str]) -> XRay:
    """:func:`~lungscope.data.io.read_image`, then a DICOM file's header (:func:`~lungscope.data.plausibility.
    header_problem`: another modality, view or body part) and the bundled orientation check: such a file, and an X-ray
    that is sideways, upside down, a negative or not recognised, raise
    :class:`~lungscope.data.plausibility.ImplausibleImageError` saying why (and how to right a turned one)."""
    xray = read_image(path)
    check_header(str(path), xray.meta)
    if (reason := default_check().problem(xray.pixels)) is not None:
        raise ImplausibleImageError(str(path), reason)
    return xray
