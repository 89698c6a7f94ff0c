"""The epoch loop every trainer runs (:func:`run_epochs`), one epoch of training and one pass of prediction: plain
loops in the style of torchvision's reference script."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lungscope.data.labels import decide
from lungscope.data.transforms import Preprocessing
from lungscope.options import POSITIVE, Range, option
from lungscope.progress import progress_bar
from lungscope.training.data import AugmentedImages, preload
from lungscope.training.distributed import gather_rows, sum_over_ranks
from lungscope.training.lung_focus import GradCamOutsideLungs
from lungscope.training.run_folder import RunFolder


@dataclass
class Progress:
    """What the loop carries from epoch to epoch (and a ``last.pt`` restores)."""

    epoch: int = 0  # epochs completed
    best: float = math.nan  # the best value of the monitored metric
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best
    seconds: float = 0.0  # of training, over every run of it (a resumed one too)


def improved(value: float, best: float, minimise: bool) -> bool:
    """Whether ``value`` beats ``best``: the first value always (``best`` NaN), a NaN never."""
    if math.isnan(best):
        return True
    if math.isnan(value):
        return False
    return value < best if minimise else value > best


def run_epochs(
    progress: Progress,
    epochs: int,
    *,
    train: Callable[[], dict[str, float]],
    validate: Callable[[], dict[str, float]],
    record: Callable[[dict[str, float], bool], None],
    monitor: str,
    minimise: bool,
    patience: int = 0,
    start: Callable[[int], None] | None = None,
) -> bool:
    """Run the epochs after ``progress.epoch`` up to ``epochs``, updating ``progress``: per epoch ``start(epoch)``
    (0-based), ``train()`` (``train_*`` metrics), ``validate()`` (``val_*`` metrics, ``monitor`` among them), then
    ``record(row, improved)`` with the epoch's row (``epoch``, the metrics, ``seconds``) and whether ``monitor`` is
    the best yet. Returns True when stopped early: ``patience`` epochs (0: never) without a better ``monitor``."""
    started = time.perf_counter() - progress.seconds
    for epoch in range(progress.epoch, epochs):
        if start is not None:
            start(epoch)
        epoch_start = time.perf_counter()
        row: dict[str, float] = {"epoch": epoch + 1, **train(), **validate()}
        better = improved(row[monitor], progress.best, minimise)
        progress.epoch = epoch + 1
        if better:
            progress.best, progress.best_epoch, progress.bad_epochs = row[monitor], epoch + 1, 0
        else:
            progress.bad_epochs += 1
        row["seconds"] = time.perf_counter() - epoch_start
        progress.seconds = time.perf_counter() - started
        record(row, better)
        if patience and progress.bad_epochs >= patience:
            return True
    return False


@dataclass
class OneCycleOptions:
    """The options the small trainers (the lung segmenter's, the orientation check's: :func:`fit_best_epoch`) share
    with the same defaults; each trainer's config adds its network, epochs, batch size and held-out fraction."""

    lr: float = option(2e-3, range=POSITIVE, help="peak learning rate of the one-cycle schedule")
    val_fraction: float = option(0.1, range=Range(0, 1, low_included=False, high_included=False),
                                 help="patients kept for choosing the best epoch")
    seed: int = option(0, help="seed of the split, the initialisation and the random draws of training")


def fit_best_epoch(
    model: nn.Module, folder: RunFolder, *, epochs: int, lr: float, count: int, batch_size: int,
    loss_of: Callable[[torch.Tensor], torch.Tensor], validate: Callable[[], dict[str, float]], monitor: str,
    desc: str, progress: bool | None, generator: torch.Generator | None = None,
) -> tuple[Progress, dict[str, torch.Tensor]]:
    """The small trainers' loop (the lung segmenter's, the orientation check's): Adam with a one-cycle schedule
    peaking at ``lr``; each epoch the ``count`` training items in a random order (drawn from ``generator``),
    ``batch_size`` at a time, ``loss_of(indices)`` minimised, then ``validate()`` (``monitor``, higher is better),
    the row written to ``folder``'s ``metrics.csv``. Returns the progress and a copy of the best epoch's weights."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, epochs=epochs,
                                                    steps_per_epoch=-(-count // batch_size))
    best_state: dict[str, torch.Tensor] = {}
    folder.open_metrics(["epoch", "train_loss", monitor, "seconds"])
    bar = progress_bar(total=epochs, desc=desc, unit="epoch", show=progress)

    def train() -> dict[str, float]:
        model.train()
        total = 0.0
        for batch in torch.randperm(count, generator=generator).split(batch_size):
            loss = loss_of(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(batch)
        return {"train_loss": total / count}

    def record(row: dict[str, float], improved: bool) -> None:
        folder.record(row)  # each epoch: progress for a log reader
        bar.update(1)
        if improved:
            best_state.update(copy_state(model))

    state = Progress()
    run_epochs(state, epochs, record=record, monitor=monitor, minimise=False, train=train, validate=validate)
    bar.close()
    return state, best_state


def copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``model``'s weights, as they are now (training goes on changing the model's)."""
    return {key: value.clone() for key, value in model.state_dict().items()}


def _autocast(device: torch.device) -> torch.autocast:
    # Mixed precision only on CUDA: bf16 autocast on CPUs without AMX is many times slower than fp32.
    return torch.autocast(device_type=device.type, dtype=torch.float16, enabled=device.type == "cuda")


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[Sequence[torch.Tensor]],
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    scaler: torch.amp.GradScaler,
    bar: tqdm,
    *,
    lung_focus: GradCamOutsideLungs | None = None,
    lung_weight: float = 0.0,
    ema: AveragedModel | None = None,
) -> dict[str, float]:
    """Train for one pass over ``loader`` (batches ``(images, targets[, lung masks])``); returns the mean loss per
    image, and the accuracy and ROC-AUC of the training batches' predictions as they were made (augmented, in train
    mode), of every rank's images when distributed (``model`` is then wrapped in DistributedDataParallel and
    ``loader`` yields this rank's share of each batch). With ``lung_focus``, ``lung_weight`` times its penalty is
    added to the loss (the batches must carry masks) and its mean is returned as ``train_outside_lungs``; ``ema``
    is updated after every step."""
    model.train()
    total, count, outside = 0.0, 0, 0.0
    scores, labels = [], []
    for batch in loader:
        images, targets = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        with _autocast(device):
            logits = model(images)
            loss = criterion(logits, targets)
            if lung_focus is not None:
                penalty = lung_focus(logits, batch[2].to(device, non_blocking=True))
                loss = loss + lung_weight * penalty
                outside += penalty.item() * len(targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if ema is not None:
            # DistributedDataParallel's .module is the model (nn.Module's __getattr__ is typed Tensor | Module)
            ema.update_parameters(model.module if hasattr(model, "module") else model)  # type: ignore[arg-type]
        total += loss.item() * len(targets)
        count += len(targets)
        scores.append(torch.softmax(logits.detach().float(), dim=1).cpu())
        labels.append(targets.cpu())
        bar.update(1)
        bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
    total, count, outside = sum_over_ranks([total, count, outside], device)  # type: ignore[assignment]  # floats
    metrics = validation_metrics(gather_rows(torch.cat(scores).numpy()), gather_rows(torch.cat(labels).numpy()))
    result = {"train_loss": total / max(count, 1), "train_accuracy": metrics["val_accuracy"],
              "train_auc": metrics["val_auc"]}
    if lung_focus is not None:
        result["train_outside_lungs"] = outside / max(count, 1)
    return result


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


def predict_files(
    model: nn.Module, preprocessing: Preprocessing, paths: Sequence[str], device: torch.device, *,
    show: bool | None = None, desc: str = "score",
) -> tuple[np.ndarray, list[int]]:
    """Class probabilities (softmax) of the readable files among ``paths``, preprocessed as a run validates, and
    their indices in ``paths``."""
    images, kept, _ = preload(list(paths), preprocessing.preprocess(), show=show, desc=desc)
    loader = DataLoader(AugmentedImages(images, [0] * len(kept), preprocessing.augment_normalise()), batch_size=64)
    return predict(model.to(device), loader, device)[0], kept


def validation_metrics(
    probabilities: np.ndarray, labels: np.ndarray, weight: torch.Tensor | None = None
) -> dict[str, float]:
    """Loss (cross-entropy, class-weighted like training when ``weight`` is given), accuracy and ROC-AUC
    (one-vs-rest macro mean for more than two classes; NaN when a class is missing)."""
    log_p = torch.log(torch.from_numpy(probabilities).clamp_min(1e-12))
    loss = nn.functional.nll_loss(log_p, torch.from_numpy(labels).long(), weight=weight).item()
    accuracy = float((decide(probabilities) == labels).mean())
    if len(np.unique(labels)) < probabilities.shape[1]:
        auc = float("nan")
    elif probabilities.shape[1] == 2:
        auc = float(roc_auc_score(labels, probabilities[:, 1]))
    else:
        auc = float(roc_auc_score(labels, probabilities, multi_class="ovr", average="macro"))
    return {"val_loss": loss, "val_accuracy": accuracy, "val_auc": auc}
