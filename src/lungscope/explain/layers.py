"""Inside the network: a layer's activations as a channel grid, the channels that fire most, convolution kernels."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import LayerActivation
from matplotlib.figure import Figure
from torch import nn

from lungscope.errors import ConfigError
from lungscope.explain.base import explaining, resolve_layer
from lungscope.explain.views import overlay, signed_view
from lungscope.models.layers import first_conv_layer

GRID_COLUMNS = 8
REGION_GRID = 256  # a box region is drawn on this grid before being averaged down to the feature map's


def layer_activations(model: nn.Module, images: torch.Tensor, layer: str | None = None) -> torch.Tensor:
    """``(N, C, h, w)`` output of the named layer (default: Grad-CAM's layer) for a batch, on the CPU."""
    name, module = resolve_layer(model, layer)
    with explaining(model), torch.no_grad():
        activations = LayerActivation(model, module).attribute(images.to(next(model.parameters()).device))
    if not isinstance(activations, torch.Tensor) or activations.ndim != 4:
        raise ConfigError(f"layer {name!r} does not give a feature map (N, C, h, w): pick a convolutional layer")
    return activations.float().cpu()


def box_region(box: tuple[float, float, float, float]) -> np.ndarray:
    """A region mask from a box ``(x0, y0, x1, y1)`` in fractions of the image's width and height."""
    x0, y0, x1, y1 = box
    if not 0 <= x0 < x1 <= 1 or not 0 <= y0 < y1 <= 1:
        raise ConfigError(f"region must be x0,y0,x1,y1 with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {box}")
    mask = np.zeros((REGION_GRID, REGION_GRID), dtype=np.float32)
    mask[round(y0 * REGION_GRID) : round(y1 * REGION_GRID), round(x0 * REGION_GRID) : round(x1 * REGION_GRID)] = 1
    return mask


def top_channels(activations: torch.Tensor, k: int = 8, region: np.ndarray | None = None) -> list[tuple[int, float]]:
    """``(channel, mean activation)`` of the ``k`` most active channels of one image's ``(C, h, w)`` activations,
    overall or inside ``region`` (a mask of any size over the image, nonzero inside; averaged down to the map)."""
    if activations.ndim != 3:
        raise ConfigError(f"expected one image's activations (C, h, w), got shape {tuple(activations.shape)}")
    if region is None:
        scores = activations.mean(dim=(1, 2))
    else:
        weights = torch.as_tensor(np.asarray(region) != 0, dtype=torch.float32)[None, None]
        weights = F.interpolate(weights, size=tuple(activations.shape[1:]), mode="area")[0, 0]
        if weights.sum() == 0:
            raise ConfigError("the region is empty")
        scores = (activations * weights).sum(dim=(1, 2)) / weights.sum()
    values, channels = scores.topk(min(k, len(scores)))
    return [(int(c), float(v)) for c, v in zip(channels, values)]


def _grid(count: int, width: float = 1.6) -> tuple[Figure, np.ndarray]:
    columns = min(GRID_COLUMNS, count)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(columns * width, rows * width + 0.6), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    for ax in axes:
        ax.set_axis_off()
    return figure, axes


def activation_grid_figure(activations: torch.Tensor, *, max_channels: int = 64, title: str = "") -> Figure:
    """The first ``max_channels`` channels of one image's ``(C, h, w)`` activations, each on its own scale."""
    shown = activations[:max_channels].numpy()
    figure, axes = _grid(len(shown))
    for channel, (ax, values) in enumerate(zip(axes, shown)):
        ax.imshow(values, cmap="viridis")
        ax.set_title(f"channel {channel}", fontsize=8)
    figure.suptitle(title or f"{len(shown)} of {len(activations)} channels")
    return figure


def top_channels_figure(
    image: np.ndarray, activations: torch.Tensor, channels: list[tuple[int, float]], *, title: str = ""
) -> Figure:
    """The model-input image, then each chosen channel's activation (upsampled, positive part) over it."""
    figure, axes = _grid(len(channels) + 1, width=2.2)
    axes[0].imshow(image, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("input", fontsize=9)
    upsampled = F.interpolate(activations[None], size=image.shape, mode="bilinear", align_corners=False)[0].numpy()
    for ax, (channel, score) in zip(axes[1:], channels):
        ax.imshow(overlay(image, signed_view(upsampled[channel], "positive"), threshold=0.1))
        ax.set_title(f"channel {channel}: {score:.3g}", fontsize=9)
    figure.suptitle(title)
    return figure


def conv_kernels(model: nn.Module, layer: str | None = None) -> tuple[str, torch.Tensor]:
    """Name and weights ``(out, in, kh, kw)`` of a convolution (default: the first, which sees the image)."""
    name, module = first_conv_layer(model) if layer is None else resolve_layer(model, layer)
    if not isinstance(module, nn.Conv2d):
        raise ConfigError(f"layer {name!r} is a {type(module).__name__}, not a convolution (nn.Conv2d)")
    return name, module.weight.detach().float().cpu()


def filter_grid_figure(weights: torch.Tensor, *, max_filters: int = 64, title: str = "") -> Figure:
    """Each kernel of ``(out, in, kh, kw)`` weights: RGB for 3 input channels, else the mean over the input
    channels (one picture per filter; showing every input-output pair would be out x in pictures), in a diverging
    colormap on one symmetric scale so that signs and relative strengths read across the grid."""
    shown = weights[:max_filters]
    figure, axes = _grid(len(shown), width=1.2)
    if shown.shape[1] == 3:
        low, high = float(shown.min()), float(shown.max())
        pictures = ((shown - low) / ((high - low) or 1.0)).permute(0, 2, 3, 1).numpy()
        for ax, picture in zip(axes, pictures):
            ax.imshow(picture, interpolation="nearest")
    else:
        means = shown.mean(dim=1).numpy()
        limit = float(np.abs(means).max()) or 1.0
        for ax, kernel in zip(axes, means):
            ax.imshow(kernel, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    figure.suptitle(title or f"{len(shown)} of {len(weights)} filters")
    return figure
