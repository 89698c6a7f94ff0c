"""A run's operating point: the calibration temperature and the decision threshold, fitted on its validation split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from lungscope.checkpoint import BEST, load_checkpoint, save_checkpoint
from lungscope.data.labels import decide
from lungscope.data.transforms import Preprocessing
from lungscope.errors import ConfigError
from lungscope.evaluation.calibration import expected_calibration_error, fit_temperature, fit_temperature_and_bias
from lungscope.evaluation.threshold import choose_threshold
from lungscope.inference import Classifier, apply_temperature

CALIBRATION_FILE = "calibration.json"
# what a checkpoint keeps of an operating point: all a Classifier needs to calibrate and decide
STORED_KEYS = ("calibration", "temperature", "bias", "threshold", "threshold_calibrated", "rule")
CALIBRATIONS = ("temperature", "temperature+bias")
DEFAULT_CALIBRATION = "temperature+bias"


def operating_point(
    probabilities: np.ndarray,
    labels: np.ndarray,
    *,
    target_sensitivity: float | None = None,
    calibration: str = DEFAULT_CALIBRATION,
) -> dict[str, Any]:
    """Calibration and threshold from validation probabilities (N x C) and class indices.

    ``calibration``: ``temperature`` (one temperature) or ``temperature+bias`` (also a per-class bias, which can
    undo a shift towards one class that a temperature cannot). ``threshold`` applies to the uncalibrated
    probability of class 1, ``threshold_calibrated`` to the calibrated one (the calibration is monotonic for two
    classes, so both make the same decisions). Multi-class runs decide by the largest probability: no threshold.
    """
    if calibration not in CALIBRATIONS:
        raise ConfigError(f"calibration must be one of {', '.join(CALIBRATIONS)}, not {calibration!r}")
    if calibration == "temperature":
        temperature, bias = fit_temperature(probabilities, labels), None
    else:
        temperature, bias = fit_temperature_and_bias(probabilities, labels)
    calibrated = apply_temperature(probabilities, temperature, bias)
    point: dict[str, Any] = {
        "calibration": calibration,
        "temperature": temperature,
        "bias": None if bias is None else [float(b) for b in bias],
        "ece_before": expected_calibration_error(probabilities, labels),
        "ece_after": expected_calibration_error(calibrated, labels),
        "n_val": int(len(labels)),
        "threshold": None,
        "threshold_calibrated": None,
        "rule": "argmax",
        "target_sensitivity": target_sensitivity,
    }
    if probabilities.shape[1] == 2:
        threshold = choose_threshold(labels, probabilities[:, 1], target_sensitivity)
        positive = decide(probabilities, threshold) == 1
        point.update(
            threshold=threshold,
            threshold_calibrated=float(
                apply_temperature(np.array([[1 - threshold, threshold]]), temperature, bias)[0, 1]
            ),
            rule="youden" if target_sensitivity is None else "target_sensitivity",
            val_sensitivity=float(positive[labels == 1].mean()),
            val_specificity=float((~positive[labels == 0]).mean()),
        )
    return point


def stored_point(point: dict[str, Any]) -> dict[str, Any]:
    """The entries of :data:`STORED_KEYS` of an :func:`operating_point`: what a checkpoint keeps of it."""
    return {key: point[key] for key in STORED_KEYS}


def store_operating_point(run_dir: str | Path, point: dict[str, Any]) -> None:
    """Write ``calibration.json`` and put temperature and threshold into ``best.pt``, so the file alone serves."""
    run_dir = Path(run_dir)
    (run_dir / CALIBRATION_FILE).write_text(json.dumps(point, indent=2) + "\n")
    best = load_checkpoint(run_dir / BEST)
    best["operating_point"] = stored_point(point)
    # a run written before checkpoints carried their preprocessing gains the entry as it is saved again
    best["preprocessing"] = Preprocessing.of_checkpoint(best).to_dict()
    save_checkpoint(best, run_dir / BEST)


def calibrate_run(
    run_dir: str | Path, *, target_sensitivity: float | None = None, calibration: str = DEFAULT_CALIBRATION
) -> dict[str, Any]:
    """Refit a finished run's operating point on its validation split (e.g. for a target sensitivity)."""
    run_dir = Path(run_dir)
    if not (run_dir / "split.csv").is_file():
        raise ConfigError(f"{run_dir}: not a run folder (no split.csv)")
    split = pd.read_csv(run_dir / "split.csv", dtype=str)
    val = split[split["split"] == "val"]
    classifier = Classifier.load(run_dir)
    predictions = [p for p in classifier.predict_files(val["path"].tolist(), calibrated=False, upright=False)
                   if p.error is None]
    label_of = dict(zip(val["path"], val["label"]))
    labels = np.array([classifier.classes.index(label_of[p.path]) for p in predictions])
    point = operating_point(
        np.stack([cast(np.ndarray, p.probabilities) for p in predictions]), labels,  # readable ones
        target_sensitivity=target_sensitivity, calibration=calibration,
    )
    store_operating_point(run_dir, point)
    return point
