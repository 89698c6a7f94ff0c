"""Training a classification head on extracted features, and the two-stage model (backbone + head) it makes.

Input: a features Parquet file from ``lungscope features`` (columns ``path``, ``label``, ``patient_id``,
``features``, ``error``; schema metadata ``lungscope`` naming the run, model, layer and label scheme). Two heads are
fitted on the train rows, chosen on the validation rows and measured on the test rows, with patient-bootstrap CIs:

* our source's dense head: hidden layers with sigmoid activations and dropout, softmax output (Adam, the epoch with
  the lowest validation loss is kept, early stopping);
* a baseline: scikit-learn's multinomial logistic regression on standardised features, its C chosen on validation.

Both train on standardised features; the standardisation is then folded into the first Linear, so each head is
plain dense layers on the raw features, and the backbone with the head is a registry ``two-stage`` model that
``predict``, ``evaluate`` and ``explain`` load from the run folder: ``best.pt`` (dense head) and ``baseline.pt``.

The split: the rows of the backbone run's ``split.csv`` keep their side (so the backbone never saw a test patient),
or a given manifest's; without either, a new patient-grouped split.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lungscope.bundled import bundled_model
from lungscope.checkpoint import BEST, save_checkpoint
from lungscope.data.labels import LABEL_SCHEMES, classes_for
from lungscope.data.splits import load_manifest, save_manifest, split_by_patient
from lungscope.data.transforms import Preprocessing
from lungscope.errors import ConfigError, DatasetError
from lungscope.evaluation.evaluate import metrics_with_ci
from lungscope.evaluation.operating import operating_point, store_operating_point, stored_point
from lungscope.evaluation.plots import plot_curves
from lungscope.features.parquet import read_features
from lungscope.inference import Classifier, checkpoint_path, fingerprint
from lungscope.models import create_model
from lungscope.models.layers import named_classifier_head
from lungscope.models.two_stage import (
    DEFAULT_DROPOUT,
    DEFAULT_HIDDEN,
    TwoStage,
    dense_head,
)
from lungscope.options import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, check_options, option
from lungscope.progress import progress_bar
from lungscope.training.engine import Progress, copy_state, predict, run_epochs, train_one_epoch, validation_metrics
from lungscope.training.run_folder import RunFolder
from lungscope.training.trainer import METRIC_COLUMNS

SPLITS = ("train", "val", "test")
BASELINE = "baseline.pt"  # the linear baseline head beside the dense one (best.pt)


@dataclass
class HeadConfig:
    """Every option of ``lungscope train-head``, each declared once (:func:`lungscope.options.option`); written to
    the run's ``config.yaml``."""

    features: str = option("", help="features Parquet file from `lungscope features`")
    out: str = option("", help="run folder to write")
    labels: str | None = option(None, choices=tuple(LABEL_SCHEMES), default_help="the features'; they must carry it",
                                help="label scheme")
    manifest: str | None = option(None, default_help="the backbone run's split.csv", help="split manifest")
    hidden: list[int] = option(default_factory=lambda: list(DEFAULT_HIDDEN), range=AT_LEAST_ONE, metavar="N",
                               help="hidden layer sizes")
    dropout: float = option(DEFAULT_DROPOUT, range=FRACTION, help="dropout after each hidden layer")
    lr: float = option(1e-3, range=POSITIVE, help="Adam learning rate")
    weight_decay: float = option(1e-4, range=NON_NEGATIVE, help="Adam weight decay")
    batch_size: int = option(64, range=AT_LEAST_ONE, help="rows per step")
    epochs: int = option(300, range=AT_LEAST_ONE, help="at most this many epochs")
    patience: int = option(30, range=AT_LEAST_ONE, help="stop after this many epochs without a lower validation loss")
    baseline_c: list[float] = option(default_factory=lambda: [0.001, 0.01, 0.1, 1.0, 10.0], range=POSITIVE,
                                     metavar="C", help="the logistic regression's inverse regularisation strengths "
                                     "tried on validation")
    val_fraction: float = option(0.15, range=FRACTION,
                                 help="only for a new split (no manifest, and a backbone without split.csv)")
    test_fraction: float = option(0.15, range=FRACTION, help="likewise, of the patients for testing")
    n_resamples: int = option(1000, range=NON_NEGATIVE, flag="--resamples",
                              help="patient-bootstrap resamples for the CIs")
    seed: int = option(0, help="random seed")

    def __post_init__(self) -> None:
        check_options(self)
        if not self.baseline_c:
            raise ConfigError("baseline_c must hold at least one value")


@dataclass
class _Rows:
    """The usable rows of one split: features (N x D float32), class indices, patients, and the frame."""

    x: np.ndarray
    y: np.ndarray
    patients: np.ndarray
    frame: pd.DataFrame


def _layer_option(layer: str, backbone: str, options: dict[str, Any]) -> str | None:
    """The ``two-stage`` layer option for the layer recorded in the features file (``NAME:input`` = penultimate)."""
    if not layer.endswith(":input"):
        return layer
    with torch.device("meta"):
        final = named_classifier_head(create_model(backbone, **options))[0]
    if layer != f"{final}:input":
        raise ConfigError(
            f"features taken at {layer!r}: only the input of the final Linear ({final}:input) is supported"
        )
    return None


def _assign_split(frame: pd.DataFrame, config: HeadConfig, run: str) -> tuple[pd.DataFrame, str]:
    """``frame`` with ``split`` (rows outside the manifest dropped) and where the split came from."""
    manifest = config.manifest or (os.path.join(run, "split.csv") if not bundled_model(run) else None)
    if manifest is None or not os.path.isfile(manifest):
        if config.manifest:
            raise ConfigError(f"{config.manifest}: manifest not found")
        warnings.warn(f"the features' run {run} has no split.csv: a new patient-grouped split is made, and the "
                      "backbone may have trained on its test patients", stacklevel=2)
        split = split_by_patient(frame, val=config.val_fraction, test=config.test_fraction, seed=config.seed)
        return split, "new patient-grouped split"
    sides = load_manifest(manifest)
    side_of = dict(zip(sides["path"].map(os.path.abspath), sides["split"]))
    out = frame.assign(split=frame["path"].map(lambda p: side_of.get(os.path.abspath(p))))
    return out[out["split"].isin(SPLITS)].reset_index(drop=True), str(manifest)


def _rows(frame: pd.DataFrame, classes: list[str], split: str) -> _Rows:
    part = frame[frame["split"] == split].reset_index(drop=True)
    if part.empty:
        raise DatasetError(f"no {split} rows: the features and the split share no {split} image")
    x = np.stack(part["features"].to_numpy()).astype(np.float32)
    return _Rows(x, part["label"].map(classes.index).to_numpy(np.int64), part["patient_id"].to_numpy(), part)


def _fold(linear: nn.Linear, scaler: StandardScaler) -> None:
    """Make ``linear`` take raw features: ``W (x - m) / s + b`` becomes ``(W / s) x + (b - W m / s)``."""
    scale = torch.as_tensor(scaler.scale_, dtype=torch.float32)
    mean = torch.as_tensor(scaler.mean_, dtype=torch.float32)
    with torch.no_grad():
        linear.weight.div_(scale)
        linear.bias.sub_(linear.weight @ mean)


def _loader(x: np.ndarray, y: np.ndarray, batch_size: int, generator: torch.Generator | None = None) -> DataLoader:
    data = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    return DataLoader(data, batch_size=batch_size, shuffle=generator is not None, generator=generator)


def fit_dense_head(
    train: _Rows, val: _Rows, n_classes: int, config: HeadConfig, folder: RunFolder, progress: bool | None = None
) -> tuple[nn.Sequential, dict[str, Any]]:
    """The dense head at its lowest validation loss, taking raw features; and how training went (a row per epoch in
    ``folder``'s ``metrics.csv``)."""
    scaler = StandardScaler().fit(train.x)
    x_train, x_val = scaler.transform(train.x).astype(np.float32), scaler.transform(val.x).astype(np.float32)
    torch.manual_seed(config.seed)
    head = dense_head(train.x.shape[1], n_classes, config.hidden, config.dropout)
    optimizer = torch.optim.Adam(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    criterion, device = nn.CrossEntropyLoss(), torch.device("cpu")
    scaler_amp = torch.amp.GradScaler("cpu", enabled=False)
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = _loader(x_train, train.y, config.batch_size, generator)
    val_loader = _loader(x_val, val.y, 1024)
    folder.open_metrics(METRIC_COLUMNS)
    best_state: dict[str, torch.Tensor] = {}
    bar = progress_bar(total=config.epochs * len(train_loader), desc="train dense head", unit="batch", show=progress)

    def record(row: dict[str, float], improved: bool) -> None:
        folder.record({**row, "lr": config.lr})
        if improved:
            best_state.update(copy_state(head))

    state = Progress()
    run_epochs(state, config.epochs, record=record, monitor="val_loss", minimise=True, patience=config.patience,
               train=lambda: train_one_epoch(head, train_loader, criterion, optimizer, device, scaler_amp, bar),
               validate=lambda: validation_metrics(*predict(head, val_loader, device)))
    bar.close()
    head.load_state_dict(best_state)  # set by the first epoch
    _fold(cast(nn.Linear, head[0]), scaler)
    return head.eval(), {"best_epoch": state.best_epoch, "epochs_run": state.epoch, "val_loss": state.best}


def fit_baseline(train: _Rows, val: _Rows, n_classes: int, config: HeadConfig) -> tuple[nn.Sequential, dict[str, Any]]:
    """Logistic regression on standardised features, C chosen by validation log-loss, as a Linear on raw features."""
    scaler = StandardScaler().fit(train.x)
    x_train, x_val = scaler.transform(train.x), scaler.transform(val.x)
    scores = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the small Cs converge; a large one may stop early
        fitted = {c: LogisticRegression(C=c, max_iter=2000).fit(x_train, train.y) for c in config.baseline_c}
    for c, model in fitted.items():
        scores[c] = log_loss(val.y, model.predict_proba(x_val), labels=list(range(n_classes)))
    chosen = min(scores, key=scores.__getitem__)
    model = fitted[chosen]
    coef, intercept = model.coef_, model.intercept_
    if n_classes == 2:  # scikit-learn keeps one logit for two classes: softmax([0, z]) = sigmoid(z)
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.r_[0.0, intercept]
    head = dense_head(train.x.shape[1], n_classes, [])
    linear = cast(nn.Linear, head[0])  # a head without hidden layers is a single Linear
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(coef))
        linear.bias.copy_(torch.as_tensor(intercept))
    _fold(linear, scaler)
    return head.eval(), {"C": chosen, "val_log_loss_by_C": {str(c): s for c, s in scores.items()}}


@torch.no_grad()
def head_probabilities(head: nn.Module, x: np.ndarray) -> np.ndarray:
    """Softmax probabilities (N x C) of a head on raw feature vectors."""
    return torch.softmax(head.eval()(torch.from_numpy(x)), dim=1).numpy()


def _measure(head: nn.Module, rows: _Rows, classes: list[str], threshold: float | None, config: HeadConfig) -> dict:
    metrics, matrix, per_class = metrics_with_ci(
        head_probabilities(head, rows.x), rows.y, rows.patients, threshold, n_resamples=config.n_resamples,
        seed=config.seed,
    )
    counts = rows.frame["label"].value_counts()
    report = {"n_images": len(rows.y), "n_patients": len(set(rows.patients)),
              "class_counts": {c: int(counts.get(c, 0)) for c in classes}, "threshold": threshold,
              "metrics": metrics, "confusion_matrix": matrix.tolist()}
    if per_class is not None:
        report["per_class"] = dict(zip(classes, per_class))
    return report


def _checkpoint(model: TwoStage, config: dict[str, Any], classes: list[str], preprocessing: Preprocessing,
                extra: dict[str, Any]) -> dict[str, Any]:
    return {"model": model.state_dict(), "config": config, "classes": classes,
            "image_size": preprocessing.image_size, "preprocessing": preprocessing.to_dict(), **extra}


def train_head(config: HeadConfig, *, progress: bool | None = None) -> dict[str, Any]:
    """Fit both heads, build their two-stage models and write the run folder; returns ``summary.json``'s content."""
    started = time.perf_counter()
    folder = RunFolder(config.out)
    out = folder.path
    frame, meta = read_features(config.features)
    if (recorded := meta.get("checkpoint_sha256")) is not None and recorded != fingerprint(meta["run"]):
        raise ConfigError(f"{config.features}: extracted from another version of {checkpoint_path(meta['run'])} "
                          "(its SHA-256 has changed since): extract the features again with `lungscope features`")
    scheme = config.labels or meta["labels"]
    if scheme != meta["labels"]:
        raise ConfigError(f"the features carry {meta['labels']} labels, not {scheme}: extract them with "
                          f"`lungscope features RUN DATA --labels {scheme}`")
    classes = list(classes_for(scheme))
    errors = frame["error"].notna()
    unlabelled = ~errors & ~frame["label"].isin(classes)  # a file whose name and folder name no class
    usable = frame[~errors & ~unlabelled].reset_index(drop=True)
    split, split_source = _assign_split(usable, config, meta["run"])
    train, val, test = (_rows(split, classes, name) for name in SPLITS)

    folder.create(asdict(config))
    save_manifest(split, out / "split.csv")
    dense, dense_fit = fit_dense_head(train, val, len(classes), config, folder, progress)
    plot_curves(out / "metrics.csv", out / "curves.png")
    baseline, baseline_fit = fit_baseline(train, val, len(classes), config)

    backbone = Classifier.load(meta["run"])
    layer = _layer_option(meta["layer"], meta["model"], meta["model_options"])
    run_config = {
        "model": "two-stage", "labels": scheme, "features": os.path.abspath(config.features),
        "backbone_run": meta["run"], **backbone.preprocessing.to_dict(),
    }
    summary: dict[str, Any] = {
        "model": "two-stage", "backbone": meta["model"], "backbone_run": meta["run"], "layer": meta["layer"],
        "feature_dim": int(train.x.shape[1]), "labels": scheme, "classes": classes, "split": split_source,
        "n_rows": len(frame), "n_error_rows": int(errors.sum()), "n_unlabelled_rows": int(unlabelled.sum()),
        "n_outside_split": len(usable) - len(split),
    }
    for name, head, fit, hidden, dropout in (
        ("dense", dense, dense_fit, config.hidden, config.dropout), ("baseline", baseline, baseline_fit, [], 0.0)
    ):
        options = {"backbone": meta["model"], "backbone_options": meta["model_options"], "layer": layer,
                   "hidden": list(hidden), "dropout": dropout}
        model = cast(TwoStage, create_model("two-stage", num_classes=len(classes), **options))
        model.load_backbone(backbone.model.state_dict(), source=meta["run"])
        model.head.load_state_dict(head.state_dict())
        val_probabilities = head_probabilities(head, val.x)
        point = operating_point(val_probabilities, val.y)
        threshold = point["threshold"]
        state = _checkpoint(model, {**run_config, "model_options": options}, classes, backbone.preprocessing,
                            {"fit": fit, "head": name})
        checkpoint = BEST if name == "dense" else BASELINE
        if name == "dense":
            folder.save_best(state)
            store_operating_point(out, point)
        else:
            save_checkpoint({**state, "operating_point": stored_point(point)}, out / checkpoint)
        summary[name] = {
            "checkpoint": checkpoint, "hidden": list(hidden), "dropout": dropout,
            **fit, "val": _measure(head, val, classes, threshold, config),
            "test": _measure(head, test, classes, threshold, config),
        }
    summary["wall_time_seconds"] = round(time.perf_counter() - started, 1)
    folder.write_summary(summary)
    return summary
