"""Training curves from a run's ``metrics.csv``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure  # not pyplot: no global backend switch for a notebook user importing this


def plot_curves(metrics_csv: str | Path, out_png: str | Path) -> None:
    """Loss, accuracy and ROC-AUC (training batches as trained, and validation) and the learning rate, per epoch."""
    frame = pd.read_csv(metrics_csv)
    fig = Figure(figsize=(13, 3.6), layout="constrained")
    loss_ax, metric_ax, lr_ax = fig.subplots(1, 3)
    loss_ax.plot(frame["epoch"], frame["train_loss"], "o-", label="train")
    loss_ax.plot(frame["epoch"], frame["val_loss"], "o-", label="validation")
    loss_ax.set(title="loss", xlabel="epoch")
    loss_ax.legend()
    for split, style in (("train", "o--"), ("val", "o-")):
        for metric, name in (("auc", "ROC-AUC"), ("accuracy", "accuracy")):
            column = f"{split}_{metric}"
            if column in frame:  # runs written before training metrics were recorded have validation's only
                metric_ax.plot(frame["epoch"], frame[column], style, label=f"{name} ({split})")
    best = frame["val_auc"].idxmax() if frame["val_auc"].notna().any() else None
    if best is not None:
        metric_ax.axvline(frame["epoch"][best], color="grey", linestyle=":", label="best AUC")
    metric_ax.set(title="accuracy and AUC", xlabel="epoch", ylim=(min(0.5, metric_ax.get_ylim()[0]), 1.0))
    metric_ax.legend()
    lr_ax.plot(frame["epoch"], frame["lr"], "o-")
    lr_ax.set(title="learning rate", xlabel="epoch", yscale="log")
    fig.savefig(out_png, dpi=100)
