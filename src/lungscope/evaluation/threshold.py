"""Choosing the operating threshold of a binary screen on validation data (never on the data being evaluated)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve

from lungscope.errors import ConfigError


def choose_threshold(labels: np.ndarray, scores: np.ndarray, target_sensitivity: float | None = None) -> float:
    """The threshold on ``scores`` (probability of the positive class) at which an image is called positive.

    Default: the one maximising Youden's J (sensitivity + specificity - 1). With ``target_sensitivity``: the highest
    threshold whose sensitivity reaches the target, i.e. the most specific operating point that does.
    """
    if len(np.unique(labels)) < 2:
        raise ConfigError("the validation split needs both classes to choose a threshold")
    fpr, tpr, thresholds = roc_curve(labels, scores)
    thresholds = np.minimum(thresholds, 1.0)  # scikit-learn's first threshold is +inf (nothing called positive)
    if target_sensitivity is None:
        return float(thresholds[np.argmax(tpr - fpr)])
    if not 0 < target_sensitivity <= 1:
        raise ConfigError(f"target sensitivity must be in (0, 1], not {target_sensitivity}")
    return float(thresholds[np.argmax(tpr >= target_sensitivity)])  # tpr rises as the threshold falls
