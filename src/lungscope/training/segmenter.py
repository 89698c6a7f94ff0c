"""Train a lung U-Net on X-rays with binary lung masks of the same file names (e.g. ../shared/data/lung_masks)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

from lungscope.checkpoint import BEST
from lungscope.data.io import read_image, read_mask
from lungscope.data.splits import split_by_patient
from lungscope.data.transforms import NORMALISATIONS
from lungscope.errors import ConfigError
from lungscope.models import create_model, get_spec
from lungscope.models.weights import check_pretrained_input
from lungscope.options import AT_LEAST_ONE, FRACTION, Range, check_options, option
from lungscope.segmentation.files import mask_scores, pair_files
from lungscope.segmentation.masks import dice
from lungscope.segmentation.segmenter import LungSegmenter, normalise, resized
from lungscope.training.engine import OneCycleOptions, fit_best_epoch
from lungscope.training.run_folder import RunFolder


@dataclass
class SegmenterConfig(OneCycleOptions):
    """Options of a segmenter training run. Fractions are of patients (one image per patient in the shared set)."""

    model: str = option("lung-unet", help="registry name of a segmentation network")
    model_options: dict[str, Any] = option(default_factory=dict, help="keyword options of the registry's builder")
    pretrained: str | None = option(None, help="lungscope-cxr (the bundled chest X-ray model) or PATH of a "
                                    "cxr-resnet checkpoint: starts the encoder of cxr-unet; none: random")
    image_size: int = option(128, range=Range(16), help="network input side, a multiple of 8 (of 32 for cxr-unet)")
    normalise: str = option("fixed", choices=NORMALISATIONS,
                            help="fixed: (x - 0.5) / 0.25; per-image: each image by its own mean and std")
    epochs: int = option(30, range=AT_LEAST_ONE, help="epochs to train")
    batch_size: int = option(16, range=AT_LEAST_ONE, help="images per step")
    test_fraction: float = option(0.15, range=FRACTION, help="patients held out for the final Dice")

    def __post_init__(self) -> None:
        check_options(self)
        if self.image_size % 8:  # the U-Net halves it three times
            raise ConfigError(f"image_size must be a multiple of 8, not {self.image_size}")
        spec = get_spec(self.model)
        if self.pretrained is not None and spec.encoder_of is None:
            raise ConfigError(f"{self.model} has no pretrained encoder; pretrained needs a network that has one "
                              "(cxr-unet)")
        check_pretrained_input(self.pretrained, model_name=spec.encoder_of or self.model,
                               image_size=self.image_size, normalise=self.normalise)


def _load(frame: pd.DataFrame, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 1, size, size)`` in [0, 1] and masks ``(N, 1, size, size)`` in {0, 1}, resized."""
    images = resized([read_image(p).pixels for p in frame["image"]], size)
    masks = resized([read_mask(p) for p in frame["mask"]], size)
    return images.clamp(0, 1), (masks >= 0.5).float()


def _augment() -> v2.Compose:
    """Joint geometric jitter of image and mask; brightness/contrast/gamma on the image only, so the net meets
    X-rays exposed unlike the training set's."""
    return v2.Compose([
        v2.RandomAffine(degrees=10, translate=(0.08, 0.08), scale=(0.85, 1.15)),
        v2.ColorJitter(brightness=0.3, contrast=0.3),
    ])


def _loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice loss (Milletari et al. 2016): BCE for every pixel, Dice for the overlap."""
    probabilities = logits.sigmoid()
    overlap = (probabilities * masks).sum(dim=(1, 2, 3))
    soft_dice = (2 * overlap + 1) / (probabilities.sum(dim=(1, 2, 3)) + masks.sum(dim=(1, 2, 3)) + 1)
    return F.binary_cross_entropy_with_logits(logits, masks) + (1 - soft_dice).mean()


def _batch_loss(model: nn.Module, images: torch.Tensor, masks: torch.Tensor,
                normalisation: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The loss of a batch of training pairs (their indices), each pair jointly augmented."""
    augment = _augment()

    def loss_of(batch: torch.Tensor) -> torch.Tensor:
        pairs = [augment(tv_tensors.Image(images[i]), tv_tensors.Mask(masks[i])) for i in batch]
        x = torch.stack([image for image, _ in pairs])
        y = torch.stack([mask for _, mask in pairs])
        return _loss(model(normalise(x, normalisation)), y)

    return loss_of


@torch.inference_mode()
def _validate(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, normalisation: str) -> dict[str, float]:
    """The mean Dice of the raw (uncleaned) masks at the network's input size."""
    predicted = model.eval()(normalise(images, normalisation)) >= 0
    return {"val_dice": float(np.mean([dice(p.numpy(), t.numpy()) for p, t in zip(predicted, masks >= 0.5)]))}


def train_segmenter(
    images: str | os.PathLike[str], masks: str | os.PathLike[str], out: str | os.PathLike[str],
    config: SegmenterConfig | None = None, *, progress: bool | None = None,
) -> dict[str, Any]:
    """Train on a patient-grouped split of the image/mask pairs, keep the epoch with the best validation Dice, and
    score it on the held-out test part. Writes the run folder (:class:`~lungscope.training.run_folder.RunFolder`:
    ``config.yaml``, ``metrics.csv``, ``best.pt`` with the split's file names, ``summary.json``), ``split.csv`` and
    ``test_scores.csv``; returns the summary."""
    config = config or SegmenterConfig()
    folder = RunFolder(out)
    folder.create(asdict(config))
    torch.manual_seed(config.seed)
    pairs = pair_files(images, masks)
    split = split_by_patient(pairs, val=config.val_fraction, test=config.test_fraction, seed=config.seed)
    split.to_csv(folder.path / "split.csv", index=False)
    parts = {name: split[split["split"] == name] for name in ("train", "val", "test")}
    train_x, train_y = _load(parts["train"], config.image_size)
    val_x, val_y = _load(parts["val"], config.image_size)
    model = create_model(config.model, num_classes=1, pretrained=config.pretrained, **config.model_options)
    started = time.perf_counter()
    state, best_state = fit_best_epoch(
        model, folder, epochs=config.epochs, lr=config.lr, count=len(train_x), batch_size=config.batch_size,
        loss_of=_batch_loss(model, train_x, train_y, config.normalise),
        validate=lambda: _validate(model, val_x, val_y, config.normalise), monitor="val_dice", desc="segmenter",
        progress=progress)
    folder.save_best({
        "model": best_state, "epoch": state.best_epoch, "model_name": config.model,
        "model_options": config.model_options, "image_size": config.image_size, "normalise": config.normalise,
        "config": asdict(config),
        "val_dice": state.best, "split": {name: [Path(p).name for p in part["image"]] for name, part in parts.items()},
    })
    scores = mask_scores(LungSegmenter.load(folder.path / BEST), parts["test"])
    scores.to_csv(folder.path / "test_scores.csv", index=False)
    summary = {
        "images": {name: len(part) for name, part in parts.items()}, "best_epoch": state.best_epoch,
        "val_dice": state.best, "test_dice_mean": float(scores["dice"].mean()),
        "test_dice_p5": float(scores["dice"].quantile(0.05)), "test_iou_mean": float(scores["iou"].mean()),
        "test_iou_p5": float(scores["iou"].quantile(0.05)), "seconds": round(time.perf_counter() - started, 1),
        "config": asdict(config),
    }
    folder.write_summary(summary)
    return summary
