"""Classification metrics and their patient-bootstrap 95% intervals.

The metrics are computed here from counts and ranks with NumPy rather than by scikit-learn: each interval takes
1,000 resamples of every metric, and scikit-learn's input validation makes one call cost milliseconds, a hundred
times the arithmetic. tests/test_metrics.py checks every value against scikit-learn. An undefined metric (a
division by zero, an AUC with one class) is NaN here and null in a report.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import rankdata

from lungscope.data.labels import decide
from lungscope.evaluation.bootstrap import patient_bootstrap

Metric = Callable[[np.ndarray, np.ndarray], float]

METRIC_NAMES: tuple[str, ...] = (
    "accuracy", "precision", "recall", "specificity", "f1", "balanced_accuracy", "roc_auc", "pr_auc",
)
PER_CLASS_NAMES: tuple[str, ...] = ("precision", "recall", "specificity", "f1", "roc_auc", "pr_auc")


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def confusion(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts with rows the true class and columns the predicted one (scikit-learn's layout)."""
    return np.bincount(labels * n_classes + predicted, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _one_vs_rest(labels: np.ndarray, predicted: np.ndarray, positive: int) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) with ``positive`` against every other class."""
    truth, called = labels == positive, predicted == positive
    tp = int(np.count_nonzero(truth & called))
    fp = int(np.count_nonzero(called)) - tp
    fn = int(np.count_nonzero(truth)) - tp
    return tp, fp, fn, len(labels) - tp - fp - fn


def accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    return _ratio(int(np.count_nonzero(labels == predicted)), len(labels))


def precision(labels: np.ndarray, predicted: np.ndarray, positive: int = 1) -> float:
    tp, fp, _, _ = _one_vs_rest(labels, predicted, positive)
    return _ratio(tp, tp + fp)


def recall(labels: np.ndarray, predicted: np.ndarray, positive: int = 1) -> float:
    """Sensitivity: the share of ``positive`` images called ``positive``."""
    tp, _, fn, _ = _one_vs_rest(labels, predicted, positive)
    return _ratio(tp, tp + fn)


def specificity(labels: np.ndarray, predicted: np.ndarray, positive: int = 1) -> float:
    """The share of images of the other classes not called ``positive``."""
    _, fp, _, tn = _one_vs_rest(labels, predicted, positive)
    return _ratio(tn, tn + fp)


def f1(labels: np.ndarray, predicted: np.ndarray, positive: int = 1) -> float:
    """2TP / (2TP + FP + FN), as scikit-learn computes it (0 when there are errors but no true positive)."""
    tp, fp, fn, _ = _one_vs_rest(labels, predicted, positive)
    return _ratio(2 * tp, 2 * tp + fp + fn)


def balanced_accuracy(labels: np.ndarray, predicted: np.ndarray, n_classes: int = 2) -> float:
    """The mean recall over the classes; undefined when a class has no image."""
    return float(np.mean([recall(labels, predicted, k) for k in range(n_classes)]))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of binary ``labels`` (1 positive): the Mann-Whitney U over n_pos * n_neg, ties
    counting one half, which equals the trapezoidal area scikit-learn computes."""
    positive = labels == 1
    n_pos = int(np.count_nonzero(positive))
    n_neg = len(labels) - n_pos
    if not n_pos or not n_neg:
        return math.nan
    rank_sum = rankdata(scores)[positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """PR-AUC as average precision: sum over distinct thresholds of (R_n - R_{n-1}) P_n, scikit-learn's definition
    (no interpolation); undefined without a positive or without a negative."""
    positive = labels == 1
    n_pos = int(np.count_nonzero(positive))
    if not n_pos or n_pos == len(labels):
        return math.nan
    order = np.argsort(-scores, kind="stable")
    ordered = scores[order]
    last = np.r_[np.flatnonzero(np.diff(ordered)), len(ordered) - 1]  # the last row of each distinct score
    tp = np.cumsum(positive[order])[last]
    precisions = tp / (last + 1)
    gained = np.diff(np.r_[0, tp]) / n_pos
    return float(np.sum(gained * precisions))


def binary_metric_functions(threshold: float) -> dict[str, Metric]:
    """Each of :data:`METRIC_NAMES` as ``f(labels, p_positive)``; an image is positive when ``p >= threshold``."""

    def at(metric: Callable[[np.ndarray, np.ndarray], float]) -> Metric:
        return lambda labels, scores: metric(labels, decide(scores, threshold))

    return {
        "accuracy": at(accuracy), "precision": at(precision), "recall": at(recall),
        "specificity": at(specificity), "f1": at(f1), "balanced_accuracy": at(balanced_accuracy),
        "roc_auc": roc_auc, "pr_auc": average_precision,
    }


def _per_class(k: int) -> dict[str, Metric]:
    """One class against the rest as ``f(labels, probabilities N x C)``, deciding by the largest probability."""

    def at(metric: Callable[[np.ndarray, np.ndarray, int], float]) -> Metric:
        return lambda labels, scores: metric(labels, decide(scores), k)

    return {
        "precision": at(precision), "recall": at(recall), "specificity": at(specificity), "f1": at(f1),
        "roc_auc": lambda labels, scores: roc_auc((labels == k).astype(np.int64), scores[:, k]),
        "pr_auc": lambda labels, scores: average_precision((labels == k).astype(np.int64), scores[:, k]),
    }


def multiclass_metric_functions(n_classes: int) -> tuple[dict[str, Metric], list[dict[str, Metric]]]:
    """(overall, per class) as ``f(labels, probabilities N x C)``, deciding by the largest probability.

    Overall: accuracy, balanced accuracy, and the macro mean (NaN if any class's is undefined) of each per-class
    metric: precision, recall, specificity, F1, one-vs-rest ROC-AUC and PR-AUC.
    """
    per_class = [_per_class(k) for k in range(n_classes)]

    def macro(name: str) -> Metric:
        return lambda labels, scores: float(np.mean([functions[name](labels, scores) for functions in per_class]))

    overall: dict[str, Metric] = {
        "accuracy": lambda labels, scores: accuracy(labels, decide(scores)),
        "balanced_accuracy": lambda labels, scores: balanced_accuracy(labels, decide(scores), n_classes),
    }
    overall.update({name: macro(name) for name in PER_CLASS_NAMES})
    return {name: overall[name] for name in METRIC_NAMES}, per_class


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def point_values(functions: dict[str, Metric], labels: np.ndarray, scores: np.ndarray) -> dict[str, float | None]:
    """Each metric's value (None where undefined)."""
    return {name: _finite(metric(labels, scores)) for name, metric in functions.items()}


def with_ci(
    functions: dict[str, Metric],
    labels: np.ndarray,
    scores: np.ndarray,
    patients: Sequence[str] | np.ndarray,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, float | list[float] | None]]:
    """``{name: {"value": x, "ci95": [low, high]}}`` by :func:`patient_bootstrap`; None where undefined."""
    out: dict[str, dict[str, float | list[float] | None]] = {}
    for name, metric in functions.items():
        value = _finite(metric(labels, scores))
        interval = None
        if value is not None:
            try:
                _, low, high = patient_bootstrap(metric, labels, scores, patients, n_resamples=n_resamples, seed=seed)
                interval = [low, high]
            except ValueError:  # defined on the whole set but on no resample: no interval
                pass
        out[name] = {"value": value, "ci95": interval}
    return out
