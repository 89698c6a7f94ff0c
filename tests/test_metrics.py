"""The NumPy metrics agree with scikit-learn; undefined ones are NaN; intervals come from patients."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as sk

from lungscope.evaluation.metrics import (
    METRIC_NAMES,
    binary_metric_functions,
    confusion,
    multiclass_metric_functions,
    point_values,
    with_ci,
)


def _binary(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores rounded to 2 decimals, so that many scores tie."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    return labels, np.round(np.clip(labels * 0.25 + rng.random(n) * 0.75, 0, 1), 2)


def sklearn_binary(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Every binary metric as scikit-learn computes it (shared with tests/test_evaluate.py)."""
    called = (scores >= threshold).astype(int)
    return {
        "accuracy": sk.accuracy_score(labels, called),
        "precision": sk.precision_score(labels, called),
        "recall": sk.recall_score(labels, called),
        "specificity": sk.recall_score(labels, called, pos_label=0),
        "f1": sk.f1_score(labels, called),
        "balanced_accuracy": sk.balanced_accuracy_score(labels, called),
        "roc_auc": sk.roc_auc_score(labels, scores),
        "pr_auc": sk.average_precision_score(labels, scores),
    }


@pytest.mark.parametrize(("n", "seed", "threshold"), [(12, 0, 0.5), (300, 1, 0.37), (2000, 2, 0.61)])
def test_binary_metrics_equal_scikit_learn(n: int, seed: int, threshold: float) -> None:
    labels, scores = _binary(n, seed)
    ours = point_values(binary_metric_functions(threshold), labels, scores)
    assert list(ours) == list(METRIC_NAMES)
    assert ours == pytest.approx(sklearn_binary(labels, scores, threshold), abs=1e-12)
    called = (scores >= threshold).astype(int)
    np.testing.assert_array_equal(confusion(labels, called, 2), sk.confusion_matrix(labels, called))


def test_multiclass_metrics_equal_scikit_learn() -> None:
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 600)
    probabilities = np.round(rng.dirichlet([1, 1, 1], 600) + np.eye(3)[labels] * 0.3, 1)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    called = probabilities.argmax(axis=1)
    overall, per_class = multiclass_metric_functions(3)
    ours = point_values(overall, labels, probabilities)
    expected = {
        "accuracy": sk.accuracy_score(labels, called),
        "precision": sk.precision_score(labels, called, average="macro"),
        "recall": sk.recall_score(labels, called, average="macro"),
        "f1": sk.f1_score(labels, called, average="macro"),
        "balanced_accuracy": sk.balanced_accuracy_score(labels, called),
        "roc_auc": sk.roc_auc_score(labels, probabilities, multi_class="ovr"),
        "pr_auc": sk.average_precision_score(np.eye(3)[labels], probabilities, average="macro"),
    }
    assert {k: ours[k] for k in expected} == pytest.approx(expected, abs=1e-12)
    f1s = sk.f1_score(labels, called, average=None)
    aucs = [sk.roc_auc_score(labels == k, probabilities[:, k]) for k in range(3)]
    for k in range(3):
        values = point_values(per_class[k], labels, probabilities)
        assert values["f1"] == pytest.approx(f1s[k]) and values["roc_auc"] == pytest.approx(aucs[k])
        assert values["specificity"] == pytest.approx(sk.recall_score(labels != k, called != k))


def test_one_class_leaves_undefined_metrics_null() -> None:
    labels = np.zeros(20, dtype=int)
    scores = np.linspace(0, 1, 20)
    values = point_values(binary_metric_functions(0.5), labels, scores)
    assert values["specificity"] == 0.5 and values["accuracy"] == 0.5
    assert all(values[k] is None for k in ("recall", "balanced_accuracy", "roc_auc", "pr_auc"))
    intervals = with_ci(binary_metric_functions(0.5), labels, scores, np.arange(20).astype(str), n_resamples=50)
    assert intervals["roc_auc"] == {"value": None, "ci95": None}
    low, high = intervals["specificity"]["ci95"]
    assert low < 0.5 < high


def test_intervals_resample_patients_not_images() -> None:
    # 80 patients with 8 identical images each carry the information of 80 images, not 640.
    labels, scores = _binary(80, 3)
    labels, scores = np.repeat(labels, 8), np.repeat(scores, 8)
    functions = binary_metric_functions(0.5)
    by_patient = with_ci(functions, labels, scores, np.repeat(np.arange(80), 8), n_resamples=300)
    by_image = with_ci(functions, labels, scores, np.arange(640), n_resamples=300)
    for name in METRIC_NAMES:
        width = np.diff(by_patient[name]["ci95"])[0]
        assert width > 2 * np.diff(by_image[name]["ci95"])[0], name
        assert by_patient[name]["value"] == by_image[name]["value"]
    repeated = with_ci(functions, labels, scores, np.repeat(np.arange(80), 8), n_resamples=300)
    assert repeated == by_patient  # seeded
    assert not math.isclose(*by_patient["roc_auc"]["ci95"])
