"""Patient-level bootstrap confidence intervals."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from lungscope.evaluation import patient_bootstrap


def _scores(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    return labels, labels * 0.8 + rng.normal(0, 0.5, n)


def test_interval_brackets_the_value_and_is_seeded() -> None:
    labels, scores = _scores(300)
    patients = np.arange(300).astype(str)
    value, low, high = patient_bootstrap(roc_auc_score, labels, scores, patients, n_resamples=300)
    assert value == pytest.approx(roc_auc_score(labels, scores))
    assert low < value < high
    assert patient_bootstrap(roc_auc_score, labels, scores, patients, n_resamples=300) == (value, low, high)


def test_copies_of_one_patient_widen_the_interval() -> None:
    # 60 patients with 10 identical images each carry the information of 60 images, not 600.
    labels, scores = _scores(60)
    labels, scores = np.repeat(labels, 10), np.repeat(scores, 10)
    by_image = patient_bootstrap(roc_auc_score, labels, scores, np.arange(600), n_resamples=400)
    by_patient = patient_bootstrap(roc_auc_score, labels, scores, np.repeat(np.arange(60), 10), n_resamples=400)
    assert by_patient[2] - by_patient[1] > 2 * (by_image[2] - by_image[1])


def test_more_patients_narrow_the_interval() -> None:
    small = patient_bootstrap(accuracy_score, *_threshold(*_scores(100)), np.arange(100), n_resamples=300)
    large = patient_bootstrap(accuracy_score, *_threshold(*_scores(2000)), np.arange(2000), n_resamples=300)
    assert large[2] - large[1] < small[2] - small[1]


def _threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return labels, (scores > 0.4).astype(int)


def test_undefined_everywhere_raises() -> None:
    with pytest.raises(ValueError, match="undefined"):
        patient_bootstrap(roc_auc_score, [1, 1, 1], [0.1, 0.2, 0.3], ["a", "b", "c"], n_resamples=10)
