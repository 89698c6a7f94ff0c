"""``lungscope segment``: lung masks and overlays of X-ray files, at each file's own resolution."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lungscope.data.io import read_image
from lungscope.errors import ImageReadError
from lungscope.predict import collect_inputs
from lungscope.progress import progress_bar
from lungscope.segmentation.segmenter import LungSegmenter

LUNG_TINT = np.array([0.2, 0.9, 0.3])  # green: the lung fields on the overlay


def mask_overlay(pixels: np.ndarray, mask: np.ndarray, alpha: float = 0.35) -> np.ndarray:
    """RGB uint8: the grey X-ray, the lungs tinted green and outlined."""
    grey = np.repeat(np.clip(pixels, 0, 1)[..., None], 3, axis=2)
    rgb = np.where(mask[..., None], (1 - alpha) * grey + alpha * LUNG_TINT, grey)
    image = np.ascontiguousarray((rgb * 255).round().astype(np.uint8))
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(1, round(max(mask.shape) / 256))
    return cv2.drawContours(image, contours, -1, (40, 230, 80), thickness)


def segment_files(
    paths: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    segmenter: str | os.PathLike[str] = "default",
    progress: bool | None = None,
) -> dict[str, Any]:
    """Segment files, folders and globs: ``OUT/masks/<stem>.png`` (255 lung, 0 not, the input's size) and
    ``OUT/overlays/<stem>.png``. Returns ``written`` (mask paths), ``lung_fraction`` per mask and ``failed``
    (``{"path", "error"}`` for what could not be read: the others are still written)."""
    from lungscope.explain.files import (
        unique_stems,  # the names explain and predict give their figures
    )

    model = LungSegmenter.load(segmenter)
    files, failed = collect_inputs(paths)
    out = Path(out)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    written, fractions = [], {}
    stems = unique_stems([Path(f) for f in files])
    for path, stem in zip(progress_bar(files, desc="segment", unit="image", show=progress), stems):
        try:
            pixels = read_image(path).pixels
        except ImageReadError as error:
            failed.append({"path": path, "error": error.reason})
            continue
        mask = model.mask(pixels)
        cv2.imwrite(str(out / "masks" / f"{stem}.png"), mask.astype(np.uint8) * 255)
        cv2.imwrite(str(out / "overlays" / f"{stem}.png"), cv2.cvtColor(mask_overlay(pixels, mask), cv2.COLOR_RGB2BGR))
        written.append(str(out / "masks" / f"{stem}.png"))
        fractions[path] = float(mask.mean())
    return {"written": written, "lung_fraction": fractions, "failed": failed}
