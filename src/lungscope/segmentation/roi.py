"""``roi: lungs``: the preprocessing step that crops an X-ray to its lung fields before it is resized.

Importing this module registers it with :func:`lungscope.data.transforms.register_roi_crop` (the data layer declares
the roi choices but needs no segmenter): ``build_preprocess(..., roi="lungs")`` then crops with it.
"""

from __future__ import annotations

import numpy as np
import torch

from lungscope.data.transforms import Box, register_roi_crop
from lungscope.segmentation.masks import lung_box
from lungscope.segmentation.segmenter import cached_segmenter


class LungCrop:
    """Preprocessing step: crop a ``(1, H, W)`` [0, 1] tensor to the box of its lungs, ``margin`` of the image added
    on every side. An image in which the segmenter finds no lungs is kept whole (``box`` returns None)."""

    def __init__(self, margin: float = 0.05, segmenter: str = "default") -> None:
        self.margin = float(margin)
        self.segmenter = str(segmenter)

    def box(self, pixels: np.ndarray | torch.Tensor) -> Box | None:
        """The crop box of a 2-D image (or ``(1, H, W)`` tensor) on its own pixel grid, or None for the whole image."""
        plane = pixels.numpy(force=True) if isinstance(pixels, torch.Tensor) else np.asarray(pixels)
        plane = plane.reshape(plane.shape[-2:])
        return lung_box(cached_segmenter(self.segmenter).mask(plane), self.margin)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        box = self.box(image)
        if box is None:
            return image
        top, left, bottom, right = box
        return image[..., top:bottom, left:right]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(margin={self.margin}, segmenter={self.segmenter!r})"


register_roi_crop("lungs", LungCrop)
