"""Probability calibration: expected calibration error, temperature scaling (Guo et al. 2017), and temperature
scaling with a per-class bias (for two classes, Platt scaling of the logit).

A temperature only rescales the logits, so it cannot undo probabilities that are *shifted* towards one class; a
bias can. Both are fitted by minimising the log-loss on validation data and keep the ranking of a binary model.
Applying them is :func:`lungscope.inference.apply_temperature`, which a loaded classifier does to every answer.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import log_softmax


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of ``labels`` (searched on log T in [1/20, 20])."""
    log_p = np.log(np.clip(probabilities, 1e-12, 1.0))
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        return float(-log_softmax(log_p / np.exp(log_t), axis=1)[rows, labels].mean())

    result = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded")
    return float(np.exp(result.x))


def fit_temperature_and_bias(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """The temperature and per-class bias (class 0's fixed at 0) minimising the negative log-likelihood (L-BFGS)."""
    log_p = np.log(np.clip(probabilities, 1e-12, 1.0))
    rows, classes = np.arange(len(labels)), probabilities.shape[1]

    def nll(params: np.ndarray) -> float:
        bias = np.concatenate([[0.0], params[1:]])
        return float(-log_softmax(log_p / np.exp(params[0]) + bias, axis=1)[rows, labels].mean())

    start = np.zeros(classes)
    bounds = [(-3.0, 3.0)] + [(-20.0, 20.0)] * (classes - 1)
    result = minimize(nll, start, method="L-BFGS-B", bounds=bounds)
    return float(np.exp(result.x[0])), np.concatenate([[0.0], result.x[1:]])


def reliability(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Per equal-width bin: mean predicted probability, observed frequency and count.

    Two classes: the probability of the positive class (index 1) against how often the image is positive.
    More classes: the top-label confidence against how often the top label is right.
    """
    if probabilities.shape[1] == 2:
        confidence, hit = probabilities[:, 1], labels == 1
    else:
        confidence, hit = probabilities.max(axis=1), probabilities.argmax(axis=1) == labels
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.bincount(bins, confidence, n_bins) / count
        observed = np.bincount(bins, hit.astype(float), n_bins) / count
    return {"mean_predicted": mean_predicted, "observed": observed, "count": count}


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> float:
    """ECE: the count-weighted mean gap between predicted probability and observed frequency over the bins."""
    table = reliability(probabilities, labels, n_bins)
    filled = table["count"] > 0
    gaps = np.abs(table["mean_predicted"][filled] - table["observed"][filled])
    return float((gaps * table["count"][filled]).sum() / table["count"].sum())
