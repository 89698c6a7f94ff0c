"""A training run: data, split, model, optimiser and schedule, the epoch loop, and the run folder it writes.

A run folder holds ``config.yaml`` (the resolved config), ``split.csv`` (the patient-grouped split manifest),
``metrics.csv`` (a row per epoch), ``curves.png``, ``best.pt`` (weights and config of the best epoch), ``last.pt``
(everything needed to resume) and ``summary.json``.

Under ``torchrun`` the processes train one model together (see :mod:`lungscope.training.distributed`): rank 0 alone
makes the split, validates, decides (best epoch, learning-rate schedule, early stopping) and writes the run folder.
"""

from __future__ import annotations

import copy
import csv
import math
import random
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler

from lungscope.checkpoint import BEST, LAST, load_checkpoint
from lungscope.data.datasets import scan_dataset
from lungscope.data.labels import classes_for
from lungscope.data.splits import (
    load_manifest,
    save_manifest,
    split_by_patient,
    subsample_by_patient,
)
from lungscope.data.transforms import (
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
from lungscope.training import ensemble
from lungscope.training.config import EMA_BN_IMAGES, TrainConfig
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
from lungscope.training.engine import Progress, predict, run_epochs, train_one_epoch, validation_metrics
from lungscope.training.lung_focus import GradCamOutsideLungs, lung_masks
from lungscope.training.run_folder import RunFolder

METRIC_COLUMNS = ["epoch", "train_loss", "train_accuracy", "train_auc", "val_loss", "val_accuracy", "val_auc", "lr",
                  "seconds"]
LUNG_FOCUS_COLUMN = "train_outside_lungs"  # with lung_focus: Grad-CAM's mean mass outside the lungs (training)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; on the CPU this makes a run repeat exactly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_split(config: TrainConfig) -> pd.DataFrame:
    """The run's images with their ``split``: the given manifest, or a new patient-grouped split of ``data``; then
    the ``extra_train`` images, in the training split."""
    if config.manifest:
        frame = load_manifest(config.manifest)
        missing = {"train", "val"} - set(frame["split"])
        if missing:
            raise DatasetError(f"{config.manifest}: the manifest has no {' or '.join(sorted(missing))} rows")
    else:
        frame = scan_dataset(config.data, labels=config.labels)
        if config.limit:
            frame = subsample_by_patient(frame, config.limit, seed=config.seed)
        frame = split_by_patient(frame, val=config.val_fraction, test=config.test_fraction, seed=config.seed)
    return with_extra_train(frame, config.extra_train, config.labels) if config.extra_train else frame


def with_extra_train(frame: pd.DataFrame, extra: str, labels: str) -> pd.DataFrame:
    """``frame`` with the images of the manifest ``extra`` added as training rows (those already in its training
    split once). An extra image or patient that ``frame`` validates or tests on raises :class:`DatasetError`: it would
    leak into the figures the run is chosen and judged by."""
    rows = scan_dataset(extra, labels=labels).assign(split="train")
    held = frame[frame["split"] != "train"]
    leaks = rows[rows["path"].isin(held["path"]) | rows["patient_id"].isin(held["patient_id"])]
    if not leaks.empty:
        raise DatasetError(f"{extra}: {len(leaks)} extra training images are validated or tested on too, e.g. "
                           f"{leaks['path'].iloc[0]} (patient {leaks['patient_id'].iloc[0]})")
    return pd.concat([frame, rows[~rows["path"].isin(frame["path"])]], ignore_index=True)


class Trainer:
    """Trains one model as :class:`TrainConfig` says and writes the run folder. ``fit()`` runs it."""

    def __init__(self, config: TrainConfig, *, resume: bool = False, progress: bool | None = None) -> None:
        """``resume=True`` continues the run in ``config.out`` (load its ``config.yaml`` with :func:`resume_config`)."""
        self.folder = RunFolder(config.out, resume=resume, resumable=True)
        self.out = self.folder.path
        self.config, self.resume, self.show = config, resume, progress
        self.device, self.rank = select_device(config.device), SINGLE
        self.classes = list(classes_for(config.labels))
        spec = get_spec(config.model)
        if spec.family == "segmentation":
            raise ConfigError(
                f"{spec.name} segments lungs, it does not classify; train it with `lungscope train-segmenter`"
            )
        self.image_size = config.image_size or spec.input_size
        self.preprocessing = config.preprocessing(self.image_size)
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
        preprocess = self.preprocessing.preprocess()
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
            transform = self.preprocessing.augment_normalise(train=train and c.augment, augment=c.augment_config())
            masks = lung_masks(images, show=self.show, desc=f"segment {split}") if train and c.lung_focus else None
            sets.append(AugmentedImages(images, targets, transform, masks))
            if train and c.ema and c.ema_bn == "recompute":
                chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(c.seed))[:EMA_BN_IMAGES]
                self.bn_images = AugmentedImages(images[chosen], [targets[i] for i in chosen.tolist()],
                                                 self.preprocessing.augment_normalise(train=False))
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
        """Build, run the epochs (each: start, train, validate, decide, record), finish; Ctrl-C says how to go on."""
        c = self.config
        if self.rank.is_main:
            self.folder.create(c.to_dict())
        seed_everything(c.seed)
        train_set, val_set = self._data()
        progress = self._build(train_set)
        self._loaders(train_set, val_set)
        if self.rank.is_main:
            self.folder.open_metrics(METRIC_COLUMNS + ([LUNG_FOCUS_COLUMN] if c.lung_focus else []), progress.epoch)
        self.bar = progress_bar(total=(c.epochs - progress.epoch) * len(self.train_loader), desc=f"train {c.model}",
                                unit="batch", show=self.show)
        started = time.perf_counter() - progress.seconds
        try:
            stopped = run_epochs(progress, c.epochs, start=self._start_epoch, train=self._train_epoch,
                                 validate=self._validate, record=partial(self._record, progress), monitor=c.monitor,
                                 minimise=c.monitor == "val_loss", patience=c.early_stopping)
        except KeyboardInterrupt:
            self.bar.close()
            self._report_interrupt(progress)
            raise
        if stopped and self.rank.is_main:
            self.bar.write(f"early stop after epoch {progress.epoch}: no better {c.monitor} in {c.early_stopping} "
                           "epochs")
        self.bar.close()
        summary = None
        if self.rank.is_main:
            summary = self._finish(progress, started, len(train_set), len(val_set))
        return broadcast(summary, self.rank)

    def _build(self, train_set: AugmentedImages) -> Progress:
        """The model (with its average when ``ema`` and its lung-focus penalty), the loss, the optimiser and
        schedule of the first stage; resuming, their state from ``last.pt``. Returns where training stands."""
        c = self.config
        model = create_model(c.model, num_classes=len(self.classes), pretrained=c.pretrained, classes=self.classes,
                             **c.model_options)
        model = sync_batchnorm(model, self.rank, self.device).to(self.device)
        if c.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.weight = class_weights(train_set.targets.tolist(), self.classes) if c.class_weights else None
        device_weight = None if self.weight is None else self.weight.to(self.device)
        if self.rank.distributed:
            self.criterion: nn.Module = GlobalBatchCrossEntropy(self.rank.world_size, device_weight,
                                                                c.label_smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss(weight=device_weight, label_smoothing=c.label_smoothing)
        # The averaged weights are the ones validated, kept in best.pt and shipped (BatchNorm statistics averaged too,
        # or recomputed before each validation: ema_bn).
        self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(c.ema), use_buffers=True) if c.ema else None
        self.evaluated = model if self.ema is None else self.ema.module
        # after the copy: the average has no hook
        self.lung_focus = GradCamOutsideLungs(model) if c.lung_focus else None
        self.model, progress = model, Progress()
        self.optimizer, self.scheduler = self._stage(model, 0)
        if self.resume:
            last = self.folder.load_last()
            model.load_state_dict(last["model"])
            if self.ema is not None:
                self.ema.load_state_dict(last["ema"])
            progress = Progress(**last["progress"])
            self.optimizer, self.scheduler = self._stage(model, progress.epoch)
            self.optimizer.load_state_dict(last["optimizer"])
            if self.scheduler is not None and last["scheduler"] is not None:
                self.scheduler.load_state_dict(last["scheduler"])
        self.net = data_parallel(model, self.rank, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.device.type == "cuda")
        return progress

    def _loaders(self, train_set: AugmentedImages, val_set: AugmentedImages) -> None:
        c = self.config
        self.generator = torch.Generator()
        self.sampler = None
        if c.sampler == "weighted":
            self.sampler = weighted_sampler(train_set.targets.tolist(), self.classes, seed=c.seed)
        order = RandomSampler(train_set, generator=self.generator) if self.sampler is None else self.sampler
        self.train_loader = self._train_loader(train_set, order, self.generator)
        self.val_loader = DataLoader(val_set, batch_size=max(c.batch_size, 64), num_workers=c.workers)

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

    # -- one epoch's steps, in run_epochs' order ------------------------------------------------------------------
    def _start_epoch(self, epoch: int) -> None:
        """The second stage from ``freeze_epochs`` on; the epoch's seeds."""
        c = self.config
        if epoch == c.freeze_epochs and epoch > 0:
            self.optimizer, self.scheduler = self._stage(self.model, epoch)
            self.net = data_parallel(self.model, self.rank, self.device)
        # Seeding each epoch from (seed, epoch) makes shuffling, sampling, augmentation and dropout the same
        # whether the run went straight through or was resumed (shuffling and sampling: on every rank).
        torch.manual_seed(rank_seed(c.seed * 10_000 + epoch, self.rank))
        self.generator.manual_seed(c.seed * 10_000 + epoch)
        if self.sampler is not None:
            self.sampler.generator.manual_seed(c.seed * 10_000 + epoch)

    def _train_epoch(self) -> dict[str, float]:
        return train_one_epoch(self.net, self.train_loader, self.criterion, self.optimizer, self.device, self.scaler,
                               self.bar, lung_focus=self.lung_focus, lung_weight=self.config.lung_focus, ema=self.ema)

    def _validate(self) -> dict[str, float]:
        """Validation on rank 0 alone; every rank then takes the same decisions. With ``ema_bn: recompute`` the
        average validated (and kept in best.pt) is a copy with its BatchNorm statistics recomputed."""
        metrics = None
        if self.rank.is_main:
            if self.ema is not None and self.config.ema_bn == "recompute":
                self.evaluated = copy.deepcopy(self.ema.module)
                update_bn(DataLoader(self.bn_images, batch_size=self.config.batch_size), self.evaluated, self.device)
            metrics = validation_metrics(*predict(self.evaluated, self.val_loader, self.device), self.weight)
        return broadcast(metrics, self.rank)

    def _record(self, progress: Progress, row: dict[str, float], improved: bool) -> None:
        """The epoch's learning rate, the schedule's step, and (rank 0) the run folder: ``best.pt`` if
        ``improved`` (the averaged weights when ``ema``), the metrics row, ``last.pt``."""
        c = self.config
        row["lr"] = self.optimizer.param_groups[0]["lr"]
        if self.scheduler is not None:
            self.scheduler.step(row[c.monitor]) if c.scheduler == "plateau" else self.scheduler.step()
        if self.rank.is_main:
            if improved:
                metrics = {key: value for key, value in row.items() if key.startswith("val_")}
                self.folder.save_best(self._best_state(progress.epoch, metrics))
            self.folder.record(row)
            self.folder.save_last({
                "model": self.model.state_dict(), "ema": None if self.ema is None else self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
                "progress": vars(progress).copy(),
            })
        self.bar.set_postfix(epoch=row["epoch"], loss=f"{row['train_loss']:.4f}", val_auc=f"{row['val_auc']:.4f}")

    def _report_interrupt(self, progress: Progress) -> None:
        if self.rank.is_main and (self.out / LAST).is_file():
            print(f"\ninterrupted after {progress.epoch} complete epoch(s); continue with: "
                  f"lungscope train --resume --out {self.out}")
        elif self.rank.is_main:
            print("\ninterrupted before the first epoch was complete: no checkpoint was saved, so there is "
                  "nothing to resume; run the same command again to start over")

    def _finish(self, progress: Progress, started: float, n_train: int, n_val: int) -> dict[str, Any]:
        """Curves, the operating point of the best weights and ``summary.json``; returns the summary."""
        c = self.config
        metrics_path = self.out / "metrics.csv"
        plot_curves(metrics_path, self.out / "curves.png")
        self.evaluated.load_state_dict(load_checkpoint(self.out / BEST)["model"])
        point = operating_point(*predict(self.evaluated, self.val_loader, self.device),
                                target_sensitivity=c.target_sensitivity, calibration=c.calibration)
        store_operating_point(self.out, point)
        summary = {
            "model": c.model, "monitor": c.monitor, "best_epoch": progress.best_epoch, "best_value": progress.best,
            "best_val_auc": self._best_val_auc(metrics_path, progress.best_epoch),
            "epochs_run": progress.epoch, "wall_time_seconds": round(time.perf_counter() - started, 1),
            "n_train": n_train, "n_val": n_val, "device": str(self.device), "processes": self.rank.world_size,
            "threshold": point["threshold_calibrated"], "temperature": point["temperature"],
        }
        self.folder.write_summary(summary)
        return summary

    def _best_state(self, epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
        return {"model": self.evaluated.state_dict(), "config": self.config.to_dict(), "classes": self.classes,
                "image_size": self.image_size, "preprocessing": self.preprocessing.to_dict(), "epoch": epoch,
                "metrics": metrics}

    @staticmethod
    def _best_val_auc(metrics_path: Path, best_epoch: int) -> float:
        with metrics_path.open() as handle:
            for row in csv.DictReader(handle):
                if int(row["epoch"]) == best_epoch:
                    return float(row["val_auc"])
        return math.nan


def resume_config(run_dir: str | Path, **overrides: Any) -> TrainConfig:
    """The config a run was started with, e.g. with more ``epochs``, to continue it."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a run folder (no config.yaml)")
    return TrainConfig.from_yaml(path, **overrides)


def train(config: TrainConfig, *, resume: bool = False, progress: bool | None = None) -> dict[str, Any]:
    """Train as ``config`` says; returns the run summary. See :class:`Trainer`; an ensemble model trains each
    member in turn (resuming, the unfinished ones), then joins them (:mod:`lungscope.training.ensemble`)."""
    if not get_spec(config.model).ensemble_of:
        return Trainer(config, resume=resume, progress=progress).fit()
    ensemble.start(config, resume=resume)
    members = ensemble.member_configs(config)
    for k, member in enumerate(members):
        if not (Path(member.out) / "summary.json").is_file():
            if progress is not False:
                print(f"member {k + 1} of {len(members)} (seed {member.seed}): {member.out}", file=sys.stderr)
            Trainer(member, resume=(Path(member.out) / LAST).is_file(), progress=progress).fit()
    return ensemble.join_members(config, progress=progress)
