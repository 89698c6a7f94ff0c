"""Training curves from a run's ``metrics.csv``."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def plot_curves(metrics_csv: str | Path, out_png: str | Path) -> None:
    """Loss (train and validation), validation accuracy and AUC, and the learning rate, per epoch."""
    frame = pd.read_csv(metrics_csv)
    fig, (loss_ax, metric_ax, lr_ax) = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
    loss_ax.plot(frame["epoch"], frame["train_loss"], "o-", label="train")
    loss_ax.plot(frame["epoch"], frame["val_loss"], "o-", label="validation")
    loss_ax.set(title="loss", xlabel="epoch")
    loss_ax.legend()
    metric_ax.plot(frame["epoch"], frame["val_auc"], "o-", label="ROC-AUC")
    metric_ax.plot(frame["epoch"], frame["val_accuracy"], "o-", label="accuracy")
    best = frame["val_auc"].idxmax() if frame["val_auc"].notna().any() else None
    if best is not None:
        metric_ax.axvline(frame["epoch"][best], color="grey", linestyle=":", label="best AUC")
    metric_ax.set(title="validation", xlabel="epoch", ylim=(min(0.5, metric_ax.get_ylim()[0]), 1.0))
    metric_ax.legend()
    lr_ax.plot(frame["epoch"], frame["lr"], "o-")
    lr_ax.set(title="learning rate", xlabel="epoch", yscale="log")
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
