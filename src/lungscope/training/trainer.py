"""A training run: data, split, model, optimiser and schedule, the epoch loop, and the run folder it writes.

A run folder holds ``config.yaml`` (the resolved config), ``split.csv`` (the patient-grouped split manifest),
``metrics.csv`` (a row per epoch), ``curves.png``, ``best.pt`` (weights and config of the best epoch), ``last.pt``
(everything needed to resume) and ``summary.json``.

Under ``torchrun`` the processes train one model together (see :mod:`lungscope.training.distributed`): rank 0 alone
makes the split, validates, decides (best epoch, learning-rate schedule, early stopping) and writes the run folder.
"""

from __future__ import annotations

import csv
import json
import math
import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler

from lungscope.checkpoint import load_checkpoint, save_checkpoint
from lungscope.data.datasets import scan_dataset
from lungscope.data.labels import classes_for
from lungscope.data.splits import (
    load_manifest,
    save_manifest,
    split_by_patient,
    subsample_by_patient,
)
from lungscope.data.transforms import (
    build_augment_normalise,
    build_preprocess,
    class_weights,
    weighted_sampler,
)
from lungscope.device import select_device
from lungscope.errors import ConfigError, DatasetError
from lungscope.evaluation.operating import operating_point, store_operating_point
from lungscope.evaluation.plots import plot_curves
from lungscope.models import classifier_head, create_model, get_spec
from lungscope.models.weights import check_pretrained_input
from lungscope.progress import progress_bar
from lungscope.training.config import TrainConfig
from lungscope.training.data import AugmentedImages, preload
from lungscope.training.distributed import (
    SINGLE,
    GlobalBatchCrossEntropy,
    ShardedBatches,
    broadcast,
    data_parallel,
    process_group,
    rank_seed,
    reseed_worker,
    sync_batchnorm,
)
from lungscope.training.engine import predict, train_one_epoch, validation_metrics
from lungscope.training.lung_focus import GradCamOutsideLungs, lung_masks

METRIC_COLUMNS = ["epoch", "train_loss", "train_accuracy", "train_auc", "val_loss", "val_accuracy", "val_auc", "lr",
                  "seconds"]
LUNG_FOCUS_COLUMN = "train_outside_lungs"  # with lung_focus: Grad-CAM's mean mass outside the lungs (training)


@dataclass
class _Progress:
    """What the loop carries from epoch to epoch, and what ``last.pt`` must restore."""

    epoch: int = 0  # epochs completed
    best: float = math.nan
    best_epoch: int = 0
    bad_epochs: int = 0
    seconds: float = 0.0


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; on the CPU this makes a run repeat exactly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_split(config: TrainConfig) -> pd.DataFrame:
    """The run's images with their ``split``: the given manifest, or a new patient-grouped split of ``data``."""
    if config.manifest:
        frame = load_manifest(config.manifest)
        missing = {"train", "val"} - set(frame["split"])
        if missing:
            raise DatasetError(f"{config.manifest}: the manifest has no {' or '.join(sorted(missing))} rows")
        return frame
    frame = scan_dataset(config.data, labels=config.labels)
    if config.limit:
        frame = subsample_by_patient(frame, config.limit, seed=config.seed)
    return split_by_patient(frame, val=config.val_fraction, test=config.test_fraction, seed=config.seed)


def _improved(value: float, best: float, monitor: str) -> bool:
    if math.isnan(best):
        return True  # the first epoch always gives a best checkpoint
    if math.isnan(value):
        return False
    return value < best if monitor == "val_loss" else value > best


class Trainer:
    """Trains one model as :class:`TrainConfig` says and writes the run folder. ``fit()`` runs it."""

    def __init__(self, config: TrainConfig, *, resume: bool = False, progress: bool | None = None) -> None:
        """``resume=True`` continues the run in ``config.out`` (load its ``config.yaml`` with :func:`resume_config`)."""
        self.out = Path(config.out)
        if not config.out:
            raise ConfigError("an output folder (--out RUN_DIR) is required")
        if resume:
            if not (self.out / "last.pt").is_file():
                raise ConfigError(f"{self.out}: nothing to resume (no last.pt)")
        elif (self.out / "last.pt").exists():
            raise ConfigError(f"{self.out} already holds a run; pass --resume to continue it or choose another --out")
        self.config, self.resume, self.show = config, resume, progress
        self.device, self.rank = select_device(config.device), SINGLE
        self.classes = list(classes_for(config.labels))
        spec = get_spec(config.model)
        if spec.family == "segmentation":
            raise ConfigError(
                f"{spec.name} segments lungs, it does not classify; train it with `lungscope train-segmenter`"
            )
        self.image_size = config.image_size or spec.input_size
        check_pretrained_input(config.pretrained, model_name=config.model, image_size=self.image_size,
                               normalise=config.normalise)

    # -- set-up -------------------------------------------------------------------------------------------------
    def _data(self) -> tuple[AugmentedImages, AugmentedImages]:
        c = self.config
        frame = None
        if self.rank.is_main:
            frame = load_manifest(self.out / "split.csv") if self.resume else make_split(c)
            if not self.resume:
                save_manifest(frame, self.out / "split.csv")
        frame = broadcast(frame, self.rank)
        preprocess = build_preprocess(self.image_size, resize=c.resize, clahe=c.clahe, roi=c.roi,
                                      roi_margin=c.roi_margin)
        sets = []
        for split, train in (("train", True), ("val", False)):
            part = frame[frame["split"] == split].reset_index(drop=True)
            if part.empty:
                raise DatasetError(f"the {split} split is empty")
            unknown = sorted(set(part["label"]) - set(self.classes))
            if unknown:
                raise DatasetError(f"labels {unknown} are not in the {c.labels} scheme ({', '.join(self.classes)})")
            images, kept, errors = preload(part["path"].tolist(), preprocess, show=self.show, desc=f"decode {split}")
            for error in errors if self.rank.is_main else ():
                print(f"warning: skipped unreadable {error['path']}: {error['error']}")
            if not kept:
                raise DatasetError(f"no readable image in the {split} split")
            targets = [self.classes.index(label) for label in part["label"].iloc[kept]]
            transform = build_augment_normalise(train=train and c.augment, augment=c.augment_config(),
                                                normalise=c.normalise, size=self.image_size)
            masks = lung_masks(images, show=self.show, desc=f"segment {split}") if train and c.lung_focus else None
            sets.append(AugmentedImages(images, targets, transform, masks))
        return sets[0], sets[1]

    def _optimizer(self, groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
        c = self.config
        if c.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=lr, momentum=c.momentum, weight_decay=c.weight_decay)
        return torch.optim.Adam(groups, lr=lr, weight_decay=c.weight_decay)

    def _scheduler(self, optimizer: torch.optim.Optimizer, epochs: int):
        c = self.config
        if c.scheduler == "plateau":
            mode: Literal["min", "max"] = "min" if c.monitor == "val_loss" else "max"
            return torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode=mode, factor=c.plateau_factor, patience=c.plateau_patience
            )
        if c.scheduler == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
        return None

    def _stage(self, model: nn.Module, epoch: int):
        """Optimiser and scheduler for the stage ``epoch`` falls in (two-stage fine-tuning: head only, then all).
        While the body trains, the head learns at ``head_lr_factor`` times the body's rate (its own param group,
        the second; schedulers scale both)."""
        c = self.config
        head_only = epoch < c.freeze_epochs
        head = list(classifier_head(model).parameters())
        body = [p for p in model.parameters() if all(p is not q for q in head)]
        for parameter in body:
            parameter.requires_grad_(not head_only)
        groups: list[dict[str, Any]]
        if head_only:
            lr, epochs = c.lr, c.freeze_epochs
            groups = [{"params": head}]
        else:
            lr = c.finetune_lr or (c.lr / 10 if c.freeze_epochs else c.lr)
            epochs = c.epochs - c.freeze_epochs
            groups = [{"params": body}, {"params": head, "lr": lr * c.head_lr_factor}]
        optimizer = self._optimizer(groups, lr)
        return optimizer, self._scheduler(optimizer, epochs)

    # -- the loop -----------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Run every epoch (or the remaining ones); returns the summary also written to ``summary.json``.
        Under torchrun every process calls it, and every process gets the summary."""
        if self.config.threads:
            # On a shared 2-core machine one thread per run can be several times faster than two that wait for each
            # other's time slices (measured: cxr-resnet training 48 vs 8 images/s beside another busy process).
            torch.set_num_threads(self.config.threads)
        with process_group(self.device) as (self.rank, self.device):
            if not self.rank.is_main:
                self.show = False
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        c = self.config
        if self.rank.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            c.to_yaml(self.out / "config.yaml")
        seed_everything(c.seed)
        train_set, val_set = self._data()
        model = create_model(c.model, num_classes=len(self.classes), pretrained=c.pretrained, classes=self.classes,
                             **c.model_options)
        model = sync_batchnorm(model, self.rank, self.device).to(self.device)
        if c.channels_last:
            model = model.to(memory_format=torch.channels_last)
        weight = class_weights(train_set.targets.tolist(), self.classes) if c.class_weights else None
        device_weight = None if weight is None else weight.to(self.device)
        if self.rank.distributed:
            criterion: nn.Module = GlobalBatchCrossEntropy(self.rank.world_size, device_weight, c.label_smoothing)
        else:
            criterion = nn.CrossEntropyLoss(weight=device_weight, label_smoothing=c.label_smoothing)
        # The averaged weights are the ones validated, kept in best.pt and shipped (BatchNorm statistics averaged too).
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(c.ema), use_buffers=True) if c.ema else None
        evaluated = model if ema is None else ema.module
        lung_focus = GradCamOutsideLungs(model) if c.lung_focus else None  # after the copy: the average has no hook
        state = _Progress()
        optimizer, scheduler = self._stage(model, 0)
        if self.resume:
            last = load_checkpoint(self.out / "last.pt")
            model.load_state_dict(last["model"])
            if ema is not None:
                ema.load_state_dict(last["ema"])
            state = _Progress(**last["progress"])
            optimizer, scheduler = self._stage(model, state.epoch)
            optimizer.load_state_dict(last["optimizer"])
            if scheduler is not None and last["scheduler"] is not None:
                scheduler.load_state_dict(last["scheduler"])
        net = data_parallel(model, self.rank, self.device)

        generator = torch.Generator()
        sampler = None
        if c.sampler == "weighted":
            sampler = weighted_sampler(train_set.targets.tolist(), self.classes, seed=c.seed)
        order = RandomSampler(train_set, generator=generator) if sampler is None else sampler
        train_loader = self._train_loader(train_set, order, generator)
        val_loader = DataLoader(val_set, batch_size=max(c.batch_size, 64), num_workers=c.workers)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.device.type == "cuda")
        metrics_path = self.out / "metrics.csv"
        self.columns = METRIC_COLUMNS + ([LUNG_FOCUS_COLUMN] if c.lung_focus else [])
        if self.rank.is_main and not self.resume:
            metrics_path.write_text(",".join(self.columns) + "\n")
        elif self.rank.is_main:
            _drop_rows_after(metrics_path, state.epoch)

        started = time.perf_counter() - state.seconds
        bar = progress_bar(total=(c.epochs - state.epoch) * len(train_loader), desc=f"train {c.model}", unit="batch",
                           show=self.show)
        try:
            for epoch in range(state.epoch, c.epochs):
                if epoch == c.freeze_epochs and epoch > 0:
                    optimizer, scheduler = self._stage(model, epoch)
                    net = data_parallel(model, self.rank, self.device)
                # Seeding each epoch from (seed, epoch) makes shuffling, sampling, augmentation and dropout the same
                # whether the run went straight through or was resumed (shuffling and sampling: on every rank).
                torch.manual_seed(rank_seed(c.seed * 10_000 + epoch, self.rank))
                generator.manual_seed(c.seed * 10_000 + epoch)
                if sampler is not None:
                    sampler.generator.manual_seed(c.seed * 10_000 + epoch)
                epoch_start = time.perf_counter()
                trained = train_one_epoch(net, train_loader, criterion, optimizer, self.device, scaler, bar,
                                          lung_focus=lung_focus, lung_weight=c.lung_focus, ema=ema)
                metrics = None
                if self.rank.is_main:  # validation on rank 0 alone; every rank then takes the same decisions
                    metrics = validation_metrics(*predict(evaluated, val_loader, self.device), weight)
                metrics = broadcast(metrics, self.rank)
                lr = optimizer.param_groups[0]["lr"]
                value = metrics[c.monitor]
                if scheduler is not None:
                    scheduler.step(value) if c.scheduler == "plateau" else scheduler.step()
                state.epoch = epoch + 1
                improved = _improved(value, state.best, c.monitor)
                if improved:
                    state.best, state.best_epoch, state.bad_epochs = value, epoch + 1, 0
                else:
                    state.bad_epochs += 1
                row = {"epoch": epoch + 1, **trained, **metrics, "lr": lr, "seconds": time.perf_counter() - epoch_start}
                state.seconds = time.perf_counter() - started
                if self.rank.is_main:
                    self._save_epoch(model, ema, optimizer, scheduler, state, row, metrics if improved else None)
                bar.set_postfix(epoch=epoch + 1, loss=f"{trained['train_loss']:.4f}",
                                val_auc=f"{metrics['val_auc']:.4f}")
                if c.early_stopping and state.bad_epochs >= c.early_stopping:
                    if self.rank.is_main:
                        bar.write(f"early stop after epoch {epoch + 1}: no better {c.monitor} in {c.early_stopping} "
                                  "epochs")
                    break
        except KeyboardInterrupt:
            bar.close()
            if self.rank.is_main and (self.out / "last.pt").is_file():
                print(f"\ninterrupted after {state.epoch} complete epoch(s); continue with: "
                      f"lungscope train --resume --out {self.out}")
            elif self.rank.is_main:
                print("\ninterrupted before the first epoch was complete: no checkpoint was saved, so there is "
                      "nothing to resume; run the same command again to start over")
            raise
        bar.close()
        summary = None
        if self.rank.is_main:
            summary = self._finish(evaluated, val_loader, state, started, len(train_set), len(val_set))
        return broadcast(summary, self.rank)

    def _train_loader(self, train_set: AugmentedImages, order: Sampler[int], generator: torch.Generator) -> DataLoader:
        """Batches of ``batch_size`` images in the sampler's ``order``; under torchrun, this rank's share of each
        (``generator`` seeds the order, the same on every rank)."""
        c = self.config
        batches: Sampler[list[int]] = BatchSampler(order, c.batch_size, drop_last=len(train_set) > c.batch_size)
        reseed = None
        if self.rank.distributed:
            if min(c.batch_size, len(train_set)) < self.rank.world_size:
                raise ConfigError(f"a batch of {min(c.batch_size, len(train_set))} image(s) cannot be shared by "
                                  f"{self.rank.world_size} processes; raise --batch-size (the global batch)")
            batches = ShardedBatches(batches, self.rank)
            reseed = partial(reseed_worker, rank=self.rank)
        return DataLoader(train_set, batch_sampler=batches, generator=generator, num_workers=c.workers,
                          worker_init_fn=reseed)

    def _save_epoch(self, model: nn.Module, ema: AveragedModel | None, optimizer: torch.optim.Optimizer,
                    scheduler: Any, state: _Progress, row: dict[str, float],
                    best_metrics: dict[str, float] | None) -> None:
        """Write an epoch: ``best.pt`` if it is the best yet (``best_metrics`` given; the averaged weights when
        ``ema``), its metrics row, ``last.pt``."""
        if best_metrics is not None:
            kept = model if ema is None else ema.module
            save_checkpoint(self._best_state(kept, state.epoch, best_metrics), self.out / "best.pt")
        with (self.out / "metrics.csv").open("a", newline="") as handle:
            csv.DictWriter(handle, self.columns).writerow({k: _fmt(v) for k, v in row.items()})
        save_checkpoint(
            {"model": model.state_dict(), "ema": None if ema is None else ema.state_dict(),
             "optimizer": optimizer.state_dict(),
             "scheduler": None if scheduler is None else scheduler.state_dict(),
             "progress": vars(state).copy()},
            self.out / "last.pt",
        )

    def _finish(self, model: nn.Module, val_loader: DataLoader, state: _Progress, started: float, n_train: int,
                n_val: int) -> dict[str, Any]:
        """Curves, the operating point of the best weights and ``summary.json``; returns the summary."""
        c = self.config
        metrics_path = self.out / "metrics.csv"
        plot_curves(metrics_path, self.out / "curves.png")
        model.load_state_dict(load_checkpoint(self.out / "best.pt")["model"])
        point = operating_point(
            *predict(model, val_loader, self.device), target_sensitivity=c.target_sensitivity, calibration=c.calibration
        )
        store_operating_point(self.out, point)
        summary = {
            "model": c.model, "monitor": c.monitor, "best_epoch": state.best_epoch, "best_value": state.best,
            "best_val_auc": self._best_val_auc(metrics_path, state.best_epoch),
            "epochs_run": state.epoch, "wall_time_seconds": round(time.perf_counter() - started, 1),
            "n_train": n_train, "n_val": n_val, "device": str(self.device), "processes": self.rank.world_size,
            "threshold": point["threshold_calibrated"], "temperature": point["temperature"],
        }
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def _best_state(self, model: nn.Module, epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
        return {"model": model.state_dict(), "config": self.config.to_dict(), "classes": self.classes,
                "image_size": self.image_size, "epoch": epoch, "metrics": metrics}

    @staticmethod
    def _best_val_auc(metrics_path: Path, best_epoch: int) -> float:
        with metrics_path.open() as handle:
            for row in csv.DictReader(handle):
                if int(row["epoch"]) == best_epoch:
                    return float(row["val_auc"])
        return math.nan


def _drop_rows_after(metrics_path: Path, epoch: int) -> None:
    """Keep the rows of epochs up to ``epoch``, the one ``last.pt`` holds. A kill after an epoch's row was written but
    before its ``last.pt`` leaves a row (perhaps a torn one) that the resumed run writes again."""
    header, *rows = metrics_path.read_text().splitlines(keepends=True)
    kept = [row for row in rows if row.endswith("\n") and int(row.split(",", 1)[0]) <= epoch]
    if kept != rows:
        tmp = metrics_path.with_suffix(".csv.tmp")
        tmp.write_text(header + "".join(kept))
        tmp.replace(metrics_path)


def _fmt(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.6g}"


def resume_config(run_dir: str | Path, **overrides: Any) -> TrainConfig:
    """The config a run was started with, e.g. with more ``epochs``, to continue it."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a run folder (no config.yaml)")
    return TrainConfig.from_yaml(path, **overrides)


def train(config: TrainConfig, *, resume: bool = False, progress: bool | None = None) -> dict[str, Any]:
    """Train as ``config`` says; returns the run summary. See :class:`Trainer`."""
    return Trainer(config, resume=resume, progress=progress).fit()
