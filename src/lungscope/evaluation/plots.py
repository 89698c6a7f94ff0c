"""Figures of an evaluation: ROC and precision-recall curves with the operating point, the confusion matrix, the
reliability diagram; a run's training curves (:func:`plot_curves`, which training draws at the end of a run);
:func:`save_figures` writes them as PNG.

Figures are :class:`matplotlib.figure.Figure` objects, never pyplot's: importing this module picks no backend."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Literal, cast

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, precision_recall_curve, roc_curve

from lungscope.evaluation.calibration import reliability
from lungscope.evaluation.evaluate import Evaluation
from lungscope.evaluation.formatting import format_probability
from lungscope.inference import apply_temperature

_SIZE = (4.8, 4.2)


def _one_vs_rest(evaluation: Evaluation) -> list[tuple[str, np.ndarray, np.ndarray, dict]]:
    """(name, 0/1 truth, score, its metrics) per curve: the positive class of a binary run, else every class
    against the rest."""
    p, y, report = evaluation.probabilities, evaluation.targets, evaluation.report
    if evaluation.threshold is not None:
        return [(evaluation.classes[1], (y == 1).astype(int), p[:, 1], report["metrics"])]
    return [(name, (y == k).astype(int), p[:, k], report["per_class"][name])
            for k, name in enumerate(evaluation.classes)]


def _undefined(ax: Axes, truth: np.ndarray) -> bool:
    """Write why there is no curve when ``truth`` holds one class only."""
    if 0 < truth.sum() < len(truth):
        return False
    ax.text(0.5, 0.5, "undefined: the data hold one class only", ha="center", va="center", transform=ax.transAxes)
    return True


def _operating_marks(evaluation: Evaluation) -> list[tuple[str, dict, str]]:
    """(label, metrics at that threshold, marker) for the operating threshold and 0.5 of a binary run."""
    report = evaluation.report
    threshold = cast(float, evaluation.threshold)  # callers check that there is one
    return [(f"threshold {format_probability(threshold)}", report["metrics"], "o"),
            ("threshold 0.5", report["metrics_at_0_5"], "s")]


def _curve_figure(
    evaluation: Evaluation,
    draw: Callable[[Axes, str, np.ndarray, np.ndarray, dict], None],
    point: tuple[str, str],
    axes: dict[str, str],
    legend: Literal["lower right", "lower left"],
    chance: bool = False,
) -> Figure:
    """One curve per :func:`_one_vs_rest` entry drawn by ``draw`` (over the chance diagonal if ``chance``); a binary
    run's operating point and 0.5 marked at the metrics named by ``point`` (x, y; ``1-specificity`` is read as one
    minus specificity)."""
    fig = Figure(figsize=_SIZE, layout="constrained")
    ax = fig.add_subplot()
    if chance:
        ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=1)
    for name, truth, score, metrics in _one_vs_rest(evaluation):
        if not _undefined(ax, truth):
            draw(ax, name, truth, score, metrics)
    if evaluation.threshold is not None:
        for label, metrics, marker in _operating_marks(evaluation):
            values = [metrics[key.removeprefix("1-")]["value"] for key in point]
            if None not in values:
                x, y = (1 - v if key.startswith("1-") else v for key, v in zip(point, values))
                ax.plot(x, y, marker, label=label)
    ax.set(**axes, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc=legend, fontsize="small")
    return fig


def _roc_curve(ax: Axes, name: str, truth: np.ndarray, score: np.ndarray, metrics: dict) -> None:
    fpr, tpr, _ = roc_curve(truth, score)
    ax.plot(fpr, tpr, label=f"{name} (AUC {metrics['roc_auc']['value']:.3f})")


def _pr_curve(ax: Axes, name: str, truth: np.ndarray, score: np.ndarray, metrics: dict) -> None:
    precision, recall, _ = precision_recall_curve(truth, score)
    ax.step(recall, precision, where="post", label=f"{name} (AP {metrics['pr_auc']['value']:.3f})")


def roc_figure(evaluation: Evaluation) -> Figure:
    """ROC curve(s) over the chance diagonal; a binary run's operating point and 0.5 are marked."""
    return _curve_figure(evaluation, _roc_curve, ("1-specificity", "recall"),
                         {"xlabel": "1 - specificity", "ylabel": "sensitivity", "title": "ROC"}, "lower right",
                         chance=True)


def pr_figure(evaluation: Evaluation) -> Figure:
    """Precision-recall curve(s); a binary run's operating point and 0.5 are marked."""
    return _curve_figure(evaluation, _pr_curve, ("recall", "precision"),
                         {"xlabel": "recall (sensitivity)", "ylabel": "precision", "title": "precision-recall"},
                         "lower left")


def confusion_figure(evaluation: Evaluation) -> Figure:
    """The confusion matrix at the operating threshold (counts; rows true, columns predicted)."""
    fig = Figure(figsize=_SIZE, layout="constrained")
    ax = fig.add_subplot()
    matrix = np.asarray(evaluation.report["confusion_matrix"])
    ConfusionMatrixDisplay(matrix, display_labels=evaluation.classes).plot(ax=ax, colorbar=False, values_format="d")
    rule = ("largest probability" if evaluation.threshold is None
            else f"threshold {format_probability(evaluation.threshold)}")
    ax.set_title(f"confusion matrix ({rule})")
    return fig


def reliability_figure(evaluation: Evaluation) -> Figure:
    """Observed frequency against mean predicted probability per bin, before and after temperature scaling."""
    fig = Figure(figsize=_SIZE, layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=1, label="perfect calibration")
    calibration = evaluation.report["calibration"]
    raw = evaluation.raw_probabilities
    for name, probabilities, ece in (
        ("uncalibrated", raw, calibration["ece_uncalibrated"]),
        (f"temperature {calibration['temperature']:.2f}",
         apply_temperature(raw, calibration["temperature"], calibration.get("bias")),
         calibration["ece_calibrated"]),
    ):
        table = reliability(probabilities, evaluation.targets)
        filled = table["count"] > 0
        ax.plot(table["mean_predicted"][filled], table["observed"][filled], "o-", label=f"{name} (ECE {ece:.3f})")
    what = "positive" if evaluation.threshold is not None else "top-label"
    ax.set(xlabel=f"mean predicted probability ({what})", ylabel="observed frequency", title="reliability",
           xlim=(0, 1), ylim=(-0.02, 1.02))
    ax.legend(loc="upper left", fontsize="small")
    return fig


def plot_curves(metrics_csv: str | Path, out_png: str | Path | BinaryIO) -> None:
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


FIGURES = {"roc": roc_figure, "pr": pr_figure, "confusion": confusion_figure, "reliability": reliability_figure}


def save_figures(evaluation: Evaluation, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``roc.png``, ``pr.png``, ``confusion.png``, ``reliability.png`` and, when the run folder has its
    ``metrics.csv``, ``curves.png`` (the training curves) into ``out_dir``; returns name -> path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, draw in FIGURES.items():
        paths[name] = out_dir / f"{name}.png"
        draw(evaluation).savefig(paths[name], dpi=100)
    metrics_csv = Path(evaluation.report["run"]) / "metrics.csv"
    if metrics_csv.is_file():
        paths["curves"] = out_dir / "curves.png"
        plot_curves(metrics_csv, paths["curves"])
    return paths
