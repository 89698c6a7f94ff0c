"""Train a lung U-Net on X-rays with binary lung masks of the same file names (e.g. ../shared/data/lung_masks)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

from lungscope.checkpoint import save_checkpoint
from lungscope.data.io import read_image
from lungscope.data.splits import split_by_patient
from lungscope.errors import ConfigError
from lungscope.models import create_model, get_spec
from lungscope.progress import progress_bar
from lungscope.segmentation.files import mask_scores, pair_files
from lungscope.segmentation.masks import dice
from lungscope.segmentation.segmenter import LungSegmenter, normalise, resized


@dataclass
class SegmenterConfig:
    """Options of a segmenter training run. Fractions are of patients (one image per patient in the shared set)."""

    model: str = "lung-unet"
    model_options: dict[str, Any] = field(default_factory=dict)
    image_size: int = 128
    epochs: int = 30
    batch_size: int = 16
    lr: float = 2e-3
    val_fraction: float = 0.1
    test_fraction: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        if self.image_size < 16 or self.image_size % 8:
            raise ConfigError(f"image_size must be a multiple of 8 of at least 16, not {self.image_size}")
        for key in ("epochs", "batch_size", "lr"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key} must be positive, not {getattr(self, key)}")


def _load(frame: pd.DataFrame, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 1, size, size)`` in [0, 1] and masks ``(N, 1, size, size)`` in {0, 1}, resized."""
    images = resized([read_image(p).pixels for p in frame["image"]], size)
    masks = resized([read_image(p).pixels >= 0.5 for p in frame["mask"]], size)
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


def train_segmenter(
    images: str | os.PathLike[str], masks: str | os.PathLike[str], out: str | os.PathLike[str],
    config: SegmenterConfig | None = None, *, progress: bool | None = None,
) -> dict[str, Any]:
    """Train on a patient-grouped split of the image/mask pairs, keep the epoch with the best validation Dice, and
    score it on the held-out test part. Writes ``OUT/best.pt`` (with the split's file names), ``OUT/split.csv``,
    ``OUT/metrics.csv`` and ``OUT/summary.json``; returns the summary."""
    config = config or SegmenterConfig()
    get_spec(config.model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    pairs = pair_files(images, masks)
    split = split_by_patient(pairs, val=config.val_fraction, test=config.test_fraction, seed=config.seed)
    split.to_csv(out / "split.csv", index=False)
    parts = {name: split[split["split"] == name] for name in ("train", "val", "test")}
    train_x, train_y = _load(parts["train"], config.image_size)
    val_x, val_y = _load(parts["val"], config.image_size)
    model = create_model(config.model, num_classes=1, **config.model_options)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, epochs=config.epochs,
                                                    steps_per_epoch=-(-len(train_x) // config.batch_size))
    augment, history, best, started = _augment(), [], -1.0, time.perf_counter()
    state: dict[str, Any] = {}
    for epoch in progress_bar(range(1, config.epochs + 1), desc="segmenter", unit="epoch", show=progress):
        model.train()
        total = 0.0
        for batch in torch.randperm(len(train_x)).split(config.batch_size):
            pairs_ = [augment(tv_tensors.Image(train_x[i]), tv_tensors.Mask(train_y[i])) for i in batch]
            x = torch.stack([image for image, _ in pairs_])
            y = torch.stack([mask for _, mask in pairs_])
            loss = _loss(model(normalise(x)), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(batch)
        model.eval()
        with torch.inference_mode():
            predicted = model(normalise(val_x)) >= 0
        val_dice = float(np.mean([dice(p.numpy(), t.numpy()) for p, t in zip(predicted, val_y >= 0.5)]))
        history.append({"epoch": epoch, "train_loss": total / len(train_x), "val_dice": val_dice,
                        "seconds": round(time.perf_counter() - started, 1)})
        pd.DataFrame(history).to_csv(out / "metrics.csv", index=False)  # each epoch: progress for a log reader
        if val_dice > best:
            best = val_dice
            state = {"model": {k: v.clone() for k, v in model.state_dict().items()}, "epoch": epoch}
    checkpoint = {
        **state, "model_name": config.model, "model_options": config.model_options, "image_size": config.image_size,
        "config": asdict(config), "val_dice": best,
        "split": {name: [Path(p).name for p in part["image"]] for name, part in parts.items()},
    }
    save_checkpoint(checkpoint, out / "best.pt")
    scores = mask_scores(LungSegmenter.load(out / "best.pt"), parts["test"])
    scores.to_csv(out / "test_scores.csv", index=False)
    summary = {
        "images": {name: len(part) for name, part in parts.items()}, "best_epoch": state["epoch"], "val_dice": best,
        "test_dice_mean": float(scores["dice"].mean()), "test_dice_p5": float(scores["dice"].quantile(0.05)),
        "test_iou_mean": float(scores["iou"].mean()), "test_iou_p5": float(scores["iou"].quantile(0.05)),
        "seconds": round(time.perf_counter() - started, 1), "config": asdict(config),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
