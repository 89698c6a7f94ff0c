"""Lung masks: clean-up of a network's mask, the lungs' bounding box, and overlap scores."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from lungscope.data.transforms import Box


def clean_mask(mask: np.ndarray, keep: int = 2) -> np.ndarray:
    """Keep the ``keep`` largest connected regions (the two lungs) and fill their holes; a boolean array."""
    mask = np.asarray(mask, dtype=bool)
    regions, count = ndimage.label(mask)
    if count > keep:
        sizes = np.bincount(regions.ravel())[1:]
        kept = np.argsort(sizes)[::-1][:keep] + 1
        mask = np.isin(regions, kept)
    return ndimage.binary_fill_holes(mask)


def lung_box(mask: np.ndarray, margin: float = 0.05, min_fraction: float = 0.02) -> Box | None:
    """The bounding box of the mask's pixels grown by ``margin`` of the image's height and width on every side
    (clipped to the image), or None when the mask covers less than ``min_fraction`` of the image (nothing found)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.mean() < min_fraction:
        return None
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    height, width = mask.shape
    grow_y, grow_x = round(margin * height), round(margin * width)
    return (max(0, rows[0] - grow_y), max(0, cols[0] - grow_x),
            min(height, rows[-1] + 1 + grow_y), min(width, cols[-1] + 1 + grow_x))


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient 2|A∩B| / (|A| + |B|) of two boolean masks (1.0 when both are empty)."""
    predicted, truth = np.asarray(predicted, dtype=bool), np.asarray(truth, dtype=bool)
    total = predicted.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * (predicted & truth).sum() / total)


def iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union |A∩B| / |A∪B| of two boolean masks (1.0 when both are empty)."""
    predicted, truth = np.asarray(predicted, dtype=bool), np.asarray(truth, dtype=bool)
    union = (predicted | truth).sum()
    return 1.0 if union == 0 else float((predicted & truth).sum() / union)
