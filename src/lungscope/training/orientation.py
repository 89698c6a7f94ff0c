"""Train the orientation check (:mod:`lungscope.orientation`) on unlabelled X-rays: every image is shown in a random
one of the eight orientations each epoch, and the network learns which. No labels are needed, so any folders of
upright X-rays in their usual grey scale do (e.g. ../shared/data/chest_xray/train and ../shared/data/lung_masks/images).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F
from torchvision.transforms import v2

from lungscope.checkpoint import BEST
from lungscope.data.datasets import find_images
from lungscope.data.io import read_image
from lungscope.data.labels import patient_id
from lungscope.data.splits import split_by_patient
from lungscope.errors import DatasetError
from lungscope.models import create_model, get_spec
from lungscope.options import AT_LEAST_ONE, FRACTION, check_options, option
from lungscope.orientation import (
    NOT_RECOGNISED,
    ORIENTATIONS,
    OrientationCheck,
    orient,
    prepared,
    reason,
    refused,
    views,
)
from lungscope.progress import progress_bar
from lungscope.segmentation.segmenter import normalise
from lungscope.training.engine import OneCycleOptions, fit_best_epoch
from lungscope.training.run_folder import RunFolder


@dataclass
class OrientationConfig(OneCycleOptions):
    """Options of an orientation-check training run. Fractions are of patients."""

    model: str = option("five-block-cnn", help="registry name of a classification network")
    epochs: int = option(10, range=AT_LEAST_ONE, help="epochs to train")
    batch_size: int = option(64, range=AT_LEAST_ONE, help="images per step")
    test_fraction: float = option(0.1, range=FRACTION, help="patients held out for the final scores")

    def __post_init__(self) -> None:
        check_options(self)
        get_spec(self.model)


def _frame(folders: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """Every image under ``folders``, its patient (from the file name where it says, else the file itself) and a
    stand-in label (its folder), which the patient-grouped split stratifies by."""
    rows = []
    for folder in folders:
        images, _ = find_images(folder)
        rows += [{"image": str(p), "patient_id": patient_id(p) or str(p), "label": p.parent.name} for p in images]
    if not rows:
        raise DatasetError(f"no images found in {', '.join(map(str, folders))}")
    return pd.DataFrame(rows)


def _augment() -> v2.Compose:
    """Jitter of tilt, position, size, exposure, contrast and sharpness, so the check meets X-rays taken and framed
    unlike the training set's; mirrored half the time, as a mirrored X-ray counts as upright."""
    return v2.Compose([
        v2.RandomHorizontalFlip(),
        v2.RandomAffine(degrees=25, translate=(0.08, 0.08), scale=(0.7, 1.2)),
        v2.ColorJitter(brightness=0.3, contrast=0.5),
        v2.RandomApply([v2.GaussianBlur(9, sigma=(0.1, 2.5))], p=0.3),
    ])


def _batch_loss(model: torch.nn.Module, images: torch.Tensor,
                generator: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    """The loss of a batch of training images (their indices), each augmented and shown in a random orientation."""
    augment = _augment()

    def loss_of(batch: torch.Tensor) -> torch.Tensor:
        targets = torch.randint(len(ORIENTATIONS), (len(batch),), generator=generator)
        x = torch.stack([orient(augment(images[i]).clamp(0, 1), int(t)) for i, t in zip(batch, targets)])
        return F.cross_entropy(model(normalise(x)), targets)

    return loss_of


def _summary(scores: np.ndarray) -> dict[str, float]:
    """Accuracy over all eight orientations, the share of upright images refused and of the others caught at
    :data:`~lungscope.orientation.REFUSE_AT`, and of the upright ones not recognised as X-rays."""
    answered = refused(scores)
    return {"accuracy": float((scores.argmax(axis=2) == np.arange(scores.shape[1])).mean()),
            "upright_refused": float(answered[:, 0].mean()), "others_refused": float(answered[:, 1:].mean()),
            "not_recognised": float(np.mean([str(reason(v)).startswith(NOT_RECOGNISED) for v in scores]))}


def train_orientation(
    folders: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], config: OrientationConfig | None = None,
    *, progress: bool | None = None,
) -> dict[str, Any]:
    """Train on a patient-grouped split of the X-rays under ``folders``, keep the epoch with the best validation
    accuracy, and score it on the held-out part. Writes the run folder (``config.yaml``, ``metrics.csv``,
    ``best.pt`` with the held-out file names, ``summary.json``) and ``split.csv``; returns the summary."""
    config = config or OrientationConfig()
    folder = RunFolder(out)
    folder.create(asdict(config))
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    split = split_by_patient(_frame(folders), val=config.val_fraction, test=config.test_fraction, seed=config.seed)
    split.to_csv(folder.path / "split.csv", index=False)
    size = get_spec(config.model).input_size
    bar = progress_bar(total=len(split), desc="reading", unit="image", show=progress)

    def load(part: str) -> torch.Tensor:
        paths = split.loc[split["split"] == part, "image"]
        images = prepared([read_image(p).pixels for p in paths], size)
        bar.update(len(paths))
        return images

    train_x, val_x, test_x = load("train"), load("val"), load("test")
    bar.close()
    model = create_model(config.model, num_classes=len(ORIENTATIONS))
    started = time.perf_counter()
    state, best_state = fit_best_epoch(
        model, folder, epochs=config.epochs, lr=config.lr, count=len(train_x), batch_size=config.batch_size,
        loss_of=_batch_loss(model, train_x, generator), generator=generator,
        validate=lambda: {"val_accuracy": _summary(views(model.eval(), val_x))["accuracy"]}, monitor="val_accuracy",
        desc="orientation", progress=progress)
    folder.save_best({"model": best_state, "model_name": config.model, "image_size": size,
                      "orientations": [list(o) for o in ORIENTATIONS], "epoch": state.best_epoch,
                      "config": asdict(config),
                      "test_images": [os.path.basename(p) for p in split.loc[split["split"] == "test", "image"]]})
    check = OrientationCheck.load(folder.path / BEST)
    summary = {
        "images": {part: int((split["split"] == part).sum()) for part in ("train", "val", "test")},
        "best_epoch": state.best_epoch, "val_accuracy": state.best,
        "test": _summary(views(check.model, test_x)) if len(test_x) else None,
        "seconds": round(time.perf_counter() - started, 1), "config": asdict(config),
    }
    folder.write_summary(summary)
    return summary
