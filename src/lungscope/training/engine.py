"""One epoch of training and one pass of prediction: a plain loop in the style of torchvision's reference script."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from tqdm.auto import tqdm

from lungscope.training.distributed import sum_over_ranks


def _autocast(device: torch.device) -> torch.autocast:
    # Mixed precision only on CUDA: bf16 autocast on CPUs without AMX is many times slower than fp32.
    return torch.autocast(device_type=device.type, dtype=torch.float16, enabled=device.type == "cuda")


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    scaler: torch.amp.GradScaler,
    bar: tqdm,
) -> float:
    """Train for one pass over ``loader``; returns the mean loss per image (of every rank's images when distributed:
    ``model`` is then wrapped in DistributedDataParallel and ``loader`` yields this rank's share of each batch)."""
    model.train()
    total, count = 0.0, 0
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with _autocast(device):
            loss = criterion(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += loss.item() * len(targets)
        count += len(targets)
        bar.update(1)
        bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
    total, count = sum_over_ranks([total, count], device)
    return total / max(count, 1)


@torch.no_grad()
def predict(
    model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (N x C, softmax) and the targets of every image in ``loader``."""
    model.eval()
    probabilities, labels = [], []
    for images, targets in loader:
        with _autocast(device):
            logits = model(images.to(device, non_blocking=True))
        probabilities.append(torch.softmax(logits.float(), dim=1).cpu())
        labels.append(targets)
    return torch.cat(probabilities).numpy(), torch.cat(labels).numpy()


def validation_metrics(probabilities: np.ndarray, labels: np.ndarray, weight: torch.Tensor | None = None) -> dict[str, float]:
    """Loss (cross-entropy, class-weighted like training when ``weight`` is given), accuracy and ROC-AUC
    (one-vs-rest macro mean for more than two classes; NaN when a class is missing)."""
    log_p = torch.log(torch.from_numpy(probabilities).clamp_min(1e-12))
    loss = nn.functional.nll_loss(log_p, torch.from_numpy(labels).long(), weight=weight).item()
    accuracy = float((probabilities.argmax(1) == labels).mean())
    if len(np.unique(labels)) < probabilities.shape[1]:
        auc = float("nan")
    elif probabilities.shape[1] == 2:
        auc = float(roc_auc_score(labels, probabilities[:, 1]))
    else:
        auc = float(roc_auc_score(labels, probabilities, multi_class="ovr", average="macro"))
    return {"val_loss": loss, "val_accuracy": accuracy, "val_auc": auc}
