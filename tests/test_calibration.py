"""Temperature scaling, calibration error and the operating threshold."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from lungscope.errors import ConfigError
from lungscope.evaluation.calibration import (
    expected_calibration_error,
    fit_temperature,
    fit_temperature_and_bias,
    reliability,
)
from lungscope.evaluation.operating import operating_point
from lungscope.evaluation.threshold import choose_threshold
from lungscope.inference import apply_temperature


def _overconfident(n: int, temperature: float, classes: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z); the 'model' reports softmax(z * temperature), too sure of itself."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, classes))
    true = softmax(logits, axis=1)
    labels = np.array([rng.choice(classes, p=p) for p in true])
    return softmax(logits * temperature, axis=1), labels


@pytest.mark.parametrize("classes", [2, 3])
def test_fitted_temperature_recovers_the_truth_and_lowers_ece(classes: int) -> None:
    fit_p, fit_y = _overconfident(4000, 2.5, classes, seed=1)
    held_p, held_y = _overconfident(4000, 2.5, classes, seed=2)
    temperature = fit_temperature(fit_p, fit_y)
    assert temperature == pytest.approx(2.5, rel=0.15)
    before = expected_calibration_error(held_p, held_y)
    after = expected_calibration_error(apply_temperature(held_p, temperature), held_y)
    assert after < before / 2


def test_ece_is_zero_for_perfect_bins_and_counts_add_up() -> None:
    probabilities = np.array([[0.75, 0.25]] * 4 + [[0.25, 0.75]] * 4)
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.0)
    assert reliability(probabilities, labels)["count"].sum() == 8
    assert expected_calibration_error(np.array([[0.1, 0.9]] * 4), np.array([0, 0, 0, 0])) == pytest.approx(0.9)


def test_youden_threshold_maximises_j_by_brute_force() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 500)
    scores = np.clip(labels * 0.3 + rng.normal(0.35, 0.2, 500), 0, 1)
    threshold = choose_threshold(labels, scores)

    def youden(t: float) -> float:
        called = scores >= t
        return called[labels == 1].mean() + (~called[labels == 0]).mean() - 1

    assert youden(threshold) == pytest.approx(max(youden(t) for t in np.unique(scores)))


def test_target_sensitivity_is_reached_by_the_most_specific_threshold() -> None:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 400)
    scores = labels * 0.2 + rng.random(400)
    threshold = choose_threshold(labels, scores, target_sensitivity=0.95)
    assert (scores[labels == 1] >= threshold).mean() >= 0.95
    higher = np.unique(scores[scores > threshold]).min()
    assert (scores[labels == 1] >= higher).mean() < 0.95
    with pytest.raises(ConfigError):
        choose_threshold(labels, scores, target_sensitivity=1.5)
    with pytest.raises(ConfigError, match="both classes"):
        choose_threshold(np.ones(5), scores[:5])


@pytest.mark.parametrize("calibration", ["temperature", "temperature+bias"])
def test_operating_point_maps_the_threshold_to_calibrated_space(calibration: str) -> None:
    probabilities, labels = _overconfident(2000, 2.0)
    point = operating_point(probabilities, labels, calibration=calibration)
    raw_calls = probabilities[:, 1] >= point["threshold"]
    calibrated = apply_temperature(probabilities, point["temperature"], point["bias"])
    calibrated_calls = calibrated[:, 1] >= point["threshold_calibrated"] - 1e-9
    assert (raw_calls == calibrated_calls).all()
    assert point["ece_after"] < point["ece_before"]
    three = operating_point(*_overconfident(500, 2.0, classes=3))
    assert three["threshold"] is None and three["rule"] == "argmax"


def test_a_bias_undoes_a_shift_that_a_temperature_cannot() -> None:
    # Well-scaled logits shifted towards class 0: the true probability of class 1 is higher than reported.
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 2, (6000, 2))
    labels = np.array([rng.choice(2, p=p) for p in softmax(logits, axis=1)])
    reported = softmax(logits - np.array([0.0, 1.5]), axis=1)
    fit, held = slice(0, 3000), slice(3000, None)
    temperature = fit_temperature(reported[fit], labels[fit])
    t_and_b = fit_temperature_and_bias(reported[fit], labels[fit])
    assert t_and_b[1][1] == pytest.approx(1.5, abs=0.25) and t_and_b[0] == pytest.approx(1.0, abs=0.15)
    before = expected_calibration_error(reported[held], labels[held])
    only_t = expected_calibration_error(apply_temperature(reported[held], temperature), labels[held])
    with_bias = expected_calibration_error(apply_temperature(reported[held], *t_and_b), labels[held])
    assert with_bias < before / 3 and with_bias < only_t
