"""Training data: decode and preprocess every image once, keep it in memory, augment per epoch."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from lungscope.data.io import read_image
from lungscope.errors import ImageReadError
from lungscope.progress import progress_bar


def preload(
    paths: Sequence[str],
    preprocess: Callable[[np.ndarray], torch.Tensor],
    *,
    workers: int | None = None,
    show: bool | None = None,
    desc: str = "decode",
) -> tuple[torch.Tensor, list[int], list[dict[str, str]]]:
    """Read and preprocess every image once, in threads (Pillow, OpenCV and pydicom release the GIL while decoding).

    Returns the images as one float16 tensor (N, 1, S, S) of the readable files, their indices in ``paths``, and
    ``{"path", "error"}`` for each unreadable file, so a bad file costs one warning, not a crashed run.
    Training images of the sizes these networks use fit in memory (5,000 images at 224x224 take 0.5 GB);
    decoding them once instead of every epoch is what keeps CPU training fast.
    """

    def load(path: str) -> torch.Tensor | str:
        try:
            return preprocess(read_image(path).pixels).to(torch.float16)
        except ImageReadError as error:
            return error.reason

    images, kept, errors = [], [], []
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        results = pool.map(load, paths, chunksize=8)
        for index, result in enumerate(progress_bar(results, total=len(paths), desc=desc, unit="img", show=show)):
            if isinstance(result, str):
                errors.append({"path": paths[index], "error": result})
            else:
                images.append(result)
                kept.append(index)
    stacked = torch.stack(images) if images else torch.empty(0, dtype=torch.float16)
    return stacked, kept, errors


class AugmentedImages(Dataset[tuple[torch.Tensor, ...]]):
    """Preloaded images with their class indices; ``transform`` (augmentation, normalisation) runs per access.

    With ``masks`` (lung masks aligned with the images, values in [0, 1]) an item is ``(image, target, mask)``, the
    mask moved by the same geometric augmentation as its image (torchvision's ``tv_tensors``); else ``(image, target)``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: Sequence[int],
        transform: Callable[..., Any],
        masks: torch.Tensor | None = None,
    ) -> None:
        if len(images) != len(targets) or (masks is not None and len(masks) != len(images)):
            raise ValueError(f"{len(images)} images but {len(targets)} targets"
                             + ("" if masks is None else f" and {len(masks)} masks"))
        self.images = images
        self.targets = torch.as_tensor(list(targets), dtype=torch.long)
        self.transform = transform
        self.masks = masks

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        image = tv_tensors.Image(self.images[index].float())
        if self.masks is None:
            return self.transform(image).as_subclass(torch.Tensor), self.targets[index]
        image, mask = self.transform(image, tv_tensors.Mask(self.masks[index].float()))
        return image.as_subclass(torch.Tensor), self.targets[index], mask.as_subclass(torch.Tensor)
