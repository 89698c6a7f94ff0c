"""Looking at a map: signed views, the heatmap over the X-ray, and the image / map / overlay figure.

A *view* is a map scaled per image: ``positive``, ``negative`` and ``absolute`` to [0, 1] (jet by default),
``all`` to [-1, 1] keeping signs (a diverging colormap: blue against the class, red for it).
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from lungscope.data.transforms import Box, ResizeImage
from lungscope.errors import ConfigError
from lungscope.evaluation.formatting import format_against, format_probability

SIGNS: tuple[str, ...] = ("positive", "negative", "absolute", "all")
DEFAULT_CMAP = "jet"
DIVERGING_CMAP = "RdBu_r"


def _check_sign(sign: str) -> None:
    if sign not in SIGNS:
        raise ConfigError(f"unknown sign {sign!r}; choose one of {', '.join(SIGNS)}")


def default_cmap(sign: str, cmap: str | None = None) -> str:
    """``cmap`` if matplotlib has it (else ConfigError, one line); without one, jet for one-signed views and a
    diverging map for ``all``."""
    _check_sign(sign)
    if cmap is not None and cmap not in matplotlib.colormaps:
        raise ConfigError(f"unknown colormap {cmap!r}; matplotlib's, e.g. {DEFAULT_CMAP}, viridis, {DIVERGING_CMAP}")
    return cmap or (DIVERGING_CMAP if sign == "all" else DEFAULT_CMAP)


def signed_view(maps: np.ndarray, sign: str = "positive") -> np.ndarray:
    """The ``sign`` part of each map ``(..., H, W)``, scaled by its largest magnitude (a map with none is all 0)."""
    _check_sign(sign)
    values = np.asarray(maps, dtype=np.float32)
    part = {
        "positive": lambda: np.maximum(values, 0),
        "negative": lambda: np.maximum(-values, 0),
        "absolute": lambda: np.abs(values),
        "all": lambda: values,
    }[sign]()
    scale = np.abs(part).max(axis=(-2, -1), keepdims=True)
    return np.divide(part, scale, out=np.zeros_like(part), where=scale > 0)


def heatmap_rgba(
    view: np.ndarray, sign: str = "positive", *, cmap: str | None = None, alpha: float = 0.5, threshold: float = 0.2
) -> np.ndarray:
    """``(H, W, 4)`` float RGBA of a view: colours from ``cmap``, opacity ``alpha``, and fully transparent where the
    view's magnitude is below ``threshold`` (so weak values leave the X-ray visible)."""
    _check_sign(sign)
    if not 0 <= alpha <= 1 or not 0 <= threshold <= 1:
        raise ConfigError(f"alpha and threshold must be within [0, 1], got {alpha} and {threshold}")
    values = np.asarray(view, dtype=np.float32)
    colours = matplotlib.colormaps[default_cmap(sign, cmap)]((values + 1) / 2 if sign == "all" else values)
    rgba = colours.astype(np.float32)
    rgba[..., 3] = np.where(np.abs(values) >= threshold, alpha, 0.0)
    return rgba


def overlay(
    image: np.ndarray,
    view: np.ndarray,
    sign: str = "positive",
    *,
    cmap: str | None = None,
    alpha: float = 0.5,
    threshold: float = 0.2,
) -> np.ndarray:
    """The heatmap composited over a grey image in [0, 1] of the same shape: ``(H, W, 3)`` float RGB in [0, 1].

    A map at the model's resolution is brought to the image's first with :func:`map_to_image`.
    """
    grey = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    if grey.shape != np.shape(view):
        raise ConfigError(f"image {grey.shape} and map {np.shape(view)} differ in size: use map_to_image first")
    rgba = heatmap_rgba(view, sign, cmap=cmap, alpha=alpha, threshold=threshold)
    weight = rgba[..., 3:]
    return (1 - weight) * grey[..., None] + weight * rgba[..., :3]


def content_box(shape: tuple[int, int], size: int, resize: str = "squash") -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the image's pixels inside the ``size`` x ``size`` model input."""
    if resize == "squash":
        return 0, 0, size, size
    # Found by resizing an all-ones image the way the data was: exactly the geometry (rounding included) of
    # ResizeImage, which a re-derivation of torchvision's letterbox arithmetic could drift from.
    placed = ResizeImage(size, resize)(torch.ones(1, *shape))[0] > 0.5
    rows, cols = placed.any(dim=1).nonzero()[:, 0], placed.any(dim=0).nonzero()[:, 0]
    return int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def map_to_image(
    map_: np.ndarray, shape: tuple[int, int], resize: str = "squash", box: Box | None = None
) -> np.ndarray:
    """A ``(S, S)`` map on the model input back onto the original image's ``(H, W)`` pixel grid: the inverse of the
    resize the input went through (``squash``: stretch back; ``pad``: drop the letterbox, then stretch). Bilinear.
    ``box`` (top, left, bottom, right): the input was this crop of the image (``roi: lungs``); the map goes back into
    it and is 0 outside, where the model saw nothing."""
    if box is not None:
        top, left, bottom, right = box
        full = np.zeros(shape, dtype=np.float32)
        full[top:bottom, left:right] = map_to_image(map_, (bottom - top, right - left), resize)
        return full
    top, left, height, width = content_box(shape, map_.shape[-1], resize)
    crop = torch.as_tensor(np.ascontiguousarray(map_[top : top + height, left : left + width]), dtype=torch.float32)
    return F.interpolate(crop[None, None], size=tuple(shape), mode="bilinear", align_corners=False)[0, 0].numpy()


def prediction_title(
    classes: Sequence[str], probabilities: np.ndarray, called: int, threshold: float | None = None
) -> str:
    """The prediction as the page, CSV and terminal give it: the probability of the positive class (of the called
    class when there are more than two) and the class called, e.g. ``P(PNEUMONIA) = 0.138 - NORMAL``; with a
    binary ``threshold``, it too (a high probability called NORMAL puzzles a reader who does not see it)."""
    shown = 1 if len(classes) == 2 else called
    value = float(probabilities[shown])
    if threshold is None or len(classes) != 2:
        return f"P({classes[shown]}) = {format_probability(value)} - {classes[called]}"
    shown_value, shown_threshold = format_against(value, threshold)
    return f"P({classes[shown]}) = {shown_value} - {classes[called]} (threshold {shown_threshold})"


def explanation_figure(
    image: np.ndarray,
    view: np.ndarray,
    sign: str = "positive",
    *,
    title: str = "",
    cmap: str | None = None,
    alpha: float = 0.5,
    threshold: float = 0.2,
) -> Figure:
    """Side by side: the X-ray, the view with a colour bar, and the overlay; ``title`` above (the prediction)."""
    cmap = default_cmap(sign, cmap)
    figure = Figure(figsize=(12, 4.4), layout="constrained")
    image_ax, map_ax, overlay_ax = figure.subplots(1, 3)
    image_ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    limits = (-1, 1) if sign == "all" else (0, 1)
    shown = map_ax.imshow(view, cmap=cmap, vmin=limits[0], vmax=limits[1])
    figure.colorbar(shown, ax=map_ax, shrink=0.8)
    overlay_ax.imshow(overlay(image, view, sign, cmap=cmap, alpha=alpha, threshold=threshold))
    labels = ("X-ray", f"map ({sign})", f"overlay (< {threshold:g} hidden)")
    for ax, label in zip((image_ax, map_ax, overlay_ax), labels):
        ax.set_title(label)
        ax.set_axis_off()
    figure.suptitle(title)
    return figure
