"""Files of lung masks: ``lungscope segment``'s masks and overlays of X-ray files, at the size they are read at (each
file's own size up to :data:`~lungscope.data.io.WORKING_SIDE` pixels on the longest side); X-rays paired with their
true masks, and a segmenter's scores on them."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from lungscope.data.datasets import collect_inputs, find_images
from lungscope.data.io import XRay, read_image, read_mask
from lungscope.data.labels import label_for, patient_id
from lungscope.data.naming import unique_stems
from lungscope.errors import DatasetError, ImageReadError
from lungscope.progress import progress_bar
from lungscope.segmentation.masks import dice, iou
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
    reader: Callable[[str], XRay] = read_image,
) -> dict[str, Any]:
    """Segment files, folders and globs: ``OUT/masks/<stem>.png`` (255 lung, 0 not) and ``OUT/overlays/<stem>.png``,
    at the size :func:`~lungscope.data.io.read_image` reads the input at: its own, or reduced to
    :data:`~lungscope.data.io.WORKING_SIDE` pixels on the longest side, aspect ratio kept. Stems from
    :func:`~lungscope.data.naming.unique_stems`. Returns ``written`` (mask paths), ``lung_fraction`` per mask and
    ``failed`` (``{"path", "error"}`` for what could not be read or written: the others are still written).
    ``reader`` reads each file: ``lungscope segment`` passes :func:`lungscope.orientation.read_upright`, which also
    refuses a turned X-ray and a picture that is not a chest X-ray, as predict and explain do."""
    model = LungSegmenter.load(segmenter)
    files, failed = collect_inputs(paths)
    out = Path(out)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    written, fractions = [], {}
    for path, stem in zip(progress_bar(files, desc="segment", unit="image", show=progress), unique_stems(files)):
        try:
            pixels = reader(path).pixels
        except ImageReadError as error:
            failed.append({"path": path, "error": error.reason})
            continue
        mask = model.mask(pixels)
        mask_png, overlay_png = out / "masks" / f"{stem}.png", out / "overlays" / f"{stem}.png"
        # cv2.imwrite reports a failure (no space, a name too long, no permission) by returning False, not raising.
        if not (cv2.imwrite(str(mask_png), mask.astype(np.uint8) * 255) and cv2.imwrite(
            str(overlay_png), cv2.cvtColor(mask_overlay(pixels, mask), cv2.COLOR_RGB2BGR)
        )):
            mask_png.unlink(missing_ok=True)  # no mask without its overlay: the file is reported failed
            failed.append({"path": path, "error": f"cannot write {mask_png} and {overlay_png}"})
            continue
        written.append(str(mask_png))
        fractions[path] = float(mask.mean())
    return {"written": written, "lung_fraction": fractions, "failed": failed}


def pair_files(images: str | os.PathLike[str], masks: str | os.PathLike[str]) -> pd.DataFrame:
    """``image``, ``mask``, ``patient_id``, ``label`` for every image of ``images`` with a mask of the same name in
    ``masks``."""
    images, masks = Path(images), Path(masks)
    for folder in (images, masks):
        if not folder.is_dir():
            raise DatasetError(f"{folder}: no such folder")
    rows = [{"image": str(path), "mask": str(masks / path.name), "patient_id": patient_id(path) or path.stem,
             "label": label_for(path, "tb") or "unknown"}  # the split keeps TB and normal shares alike
            for path in find_images(images)[0] if (masks / path.name).is_file()]
    if not rows:
        raise DatasetError(f"{images}: no image has a mask of the same name in {masks}")
    return pd.DataFrame(rows)


def mask_scores(segmenter: LungSegmenter, frame: pd.DataFrame) -> pd.DataFrame:
    """Dice and IoU of the segmenter's cleaned masks against the true masks, at each image's own resolution."""
    rows = []
    for image_path, mask_path in zip(frame["image"], frame["mask"]):
        truth = read_mask(mask_path)
        predicted = segmenter.mask(read_image(image_path).pixels)
        rows.append({"image": image_path, "dice": dice(predicted, truth), "iou": iou(predicted, truth)})
    return pd.DataFrame(rows)
