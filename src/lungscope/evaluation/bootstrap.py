"""Confidence intervals by bootstrap over patients.

Images of one patient are correlated, so resampling images would give intervals that are too narrow. Resampling
whole patients is the cluster bootstrap; neither scikit-learn nor ``scipy.stats.bootstrap`` (which resamples
observations) offers it, hence this short implementation.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning

Metric = Callable[[np.ndarray, np.ndarray], float]


def patient_bootstrap(
    metric: Metric,
    y_true: Sequence[int] | np.ndarray,
    y_score: Sequence[float] | np.ndarray,
    patients: Sequence[str] | np.ndarray,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(value, low, high)``: ``metric(y_true, y_score)`` and its percentile interval over patient resamples.

    A resample where the metric is undefined (e.g. only one class for an AUC) is drawn again, up to a limit.
    """
    y_true, y_score = np.asarray(y_true), np.asarray(y_score)
    _, group = np.unique(np.asarray(patients), return_inverse=True)
    members = np.argsort(group, kind="stable")  # image indices, grouped by patient
    starts = np.searchsorted(group[members], np.arange(group.max() + 2))
    sizes = np.diff(starts)
    rng = np.random.default_rng(seed)
    values: list[float] = []
    attempts = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # an undefined resample is drawn again instead
        while len(values) < n_resamples and attempts < 4 * n_resamples:
            attempts += 1
            chosen = rng.integers(0, len(sizes), size=len(sizes))
            # All images of each chosen patient, in one vectorised gather: position k of patient g's run maps to
            # members[starts[g] + k].
            n = sizes[chosen]
            offsets = np.repeat(starts[chosen] - np.concatenate([[0], np.cumsum(n)[:-1]]), n)
            index = members[np.arange(n.sum()) + offsets]
            try:
                value = metric(y_true[index], y_score[index])
            except ValueError:  # e.g. "Only one class present in y_true" in older scikit-learn
                continue
            if np.isfinite(value):
                values.append(float(value))
    if not values:
        raise ValueError("the metric is undefined on every bootstrap resample")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(metric(y_true, y_score)), float(low), float(high)
