"""Site calibration: a hospital fits a model's operating point (calibration and threshold) on its own labelled images.

A model's probabilities and threshold come from its validation split: one hospital, one set of devices. At another
site the same lungs can score differently (detector, exposure, processing, population), so the threshold that was
balanced at home may call too many healthy patients ill there. ``calibrate_site`` refits the operating point on the
site's own labelled X-rays and measures, out of fold and grouped by patient, what sensitivity and specificity the
refitted rule gives there, with patient-bootstrap 95% CIs. The result is saved under a site name; ``predict``,
``serve`` and ``evaluate`` use it with ``--site NAME``.

Site files live in ``$LUNGSCOPE_SITES`` (default ``~/.lungscope/sites``), one JSON file per site and model, bound to
the checkpoint by its SHA-256: a site fitted for one model is refused for another.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, cast

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from lungscope.data.datasets import scan_dataset
from lungscope.errors import ConfigError, DatasetError
from lungscope.evaluation.bootstrap import patient_bootstrap
from lungscope.evaluation.operating import DEFAULT_CALIBRATION, operating_point, stored_point
from lungscope.inference import Classifier, apply_temperature, fingerprint

MIN_PER_CLASS = 20  # fewer examples of a class than this cannot place a threshold with any precision
FOLDS = 5
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def sites_folder() -> Path:
    """Where site operating points are kept: ``$LUNGSCOPE_SITES`` or ``~/.lungscope/sites``."""
    return Path(os.environ.get("LUNGSCOPE_SITES") or Path.home() / ".lungscope" / "sites")


def site_file(name: str, source: str | os.PathLike[str], digest: str | None = None) -> Path:
    """Where site ``name``'s operating point for this model lives (``digest``: the checkpoint's, if known)."""
    if not _NAME.match(name):
        raise ConfigError(f"site name {name!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter "
                          "or digit")
    return sites_folder() / f"{name}-{(digest or fingerprint(source))[:16]}.json"


def load_site(name: str, source: str | os.PathLike[str]) -> dict[str, Any]:
    """The operating point site ``name`` fitted for this model; a one-line error if there is none."""
    path = site_file(name, source)
    if not path.is_file():
        fitted = sorted(p.name.rsplit("-", 1)[0] for p in sites_folder().glob("*.json"))
        other = " (it was calibrated for another model)" if name in fitted else ""
        raise ConfigError(f"no site {name!r} for model {source}{other}; fit it with `lungscope calibrate {source} "
                          f"--data LABELLED_DIR --site {name}`")
    return json.loads(path.read_text())


def _out_of_fold_calls(probabilities: np.ndarray, labels: np.ndarray, patients: np.ndarray,
                       target_sensitivity: float | None, calibration: str) -> np.ndarray:
    """Each image's call by an operating point fitted on the other folds' patients (never on its own)."""
    calls = np.zeros(len(labels), dtype=np.int64)
    folds = StratifiedGroupKFold(FOLDS, shuffle=True, random_state=0)
    for fit, held in folds.split(probabilities, labels, patients):
        point = operating_point(probabilities[fit], labels[fit], target_sensitivity=target_sensitivity,
                                calibration=calibration)
        calibrated = apply_temperature(probabilities[held], point["temperature"], point["bias"])
        calls[held] = calibrated[:, 1] >= point["threshold_calibrated"]
    return calls


def calibrate_site(
    source: str | os.PathLike[str], data: str | os.PathLike[str], name: str, *,
    target_sensitivity: float | None = None, calibration: str = DEFAULT_CALIBRATION, n_resamples: int = 1000,
) -> dict[str, Any]:
    """Fit ``source``'s operating point on the labelled images in ``data`` and save it as site ``name``.

    ``data`` is a labelled folder or manifest (see :func:`lungscope.data.datasets.scan_dataset`) in the model's
    label scheme. Returns what was saved: the operating point, and the out-of-fold sensitivity and specificity with
    patient-bootstrap 95% CIs (the operating point refitted without each fold's patients, those patients then
    called by it), beside the model's stored operating point scored on the same images.
    """
    classifier = Classifier.load(source)
    if len(classifier.classes) != 2:
        raise ConfigError("site calibration sets a binary model's threshold; this model has "
                          f"{len(classifier.classes)} classes")
    frame = scan_dataset(data, labels=classifier.config.get("labels", "binary"))
    predictions = list(classifier.predict_files(frame["path"].tolist(), calibrated=False, upright=False))
    readable = [i for i, p in enumerate(predictions) if p.error is None]
    frame = frame.iloc[readable].reset_index(drop=True)
    probabilities = np.stack([cast(np.ndarray, predictions[i].probabilities) for i in readable])  # readable ones
    labels = (frame["label"] == classifier.classes[1]).to_numpy().astype(np.int64)
    counts = np.bincount(labels, minlength=2)
    if counts.min() < MIN_PER_CLASS:
        raise DatasetError(f"{data}: {counts[0]} {classifier.classes[0]} and {counts[1]} {classifier.classes[1]} "
                           f"readable images; site calibration needs at least {MIN_PER_CLASS} of each")
    patients = frame["patient_id"].astype(str).to_numpy()
    if len(np.unique(patients[labels == 0])) < FOLDS or len(np.unique(patients[labels == 1])) < FOLDS:
        raise DatasetError(f"{data}: too few patients per class for {FOLDS}-fold patient-grouped calibration")
    calls = _out_of_fold_calls(probabilities, labels, patients, target_sensitivity, calibration)
    stored = classifier.decide(classifier.calibrate(probabilities))

    def rates(called: np.ndarray) -> dict[str, list[float]]:
        sensitivity = patient_bootstrap(lambda y, c: float(c[y == 1].mean()), labels, called, patients,
                                        n_resamples=n_resamples)
        specificity = patient_bootstrap(lambda y, c: float(1 - c[y == 0].mean()), labels, called, patients,
                                        n_resamples=n_resamples)
        return {"sensitivity": list(sensitivity), "specificity": list(specificity)}

    point = operating_point(probabilities, labels, target_sensitivity=target_sensitivity, calibration=calibration)
    digest = fingerprint(source)
    record = {
        "site": name, "model": str(source), "checkpoint_sha256": digest, "data": str(data),
        "n_images": int(len(labels)), "n_patients": int(len(np.unique(patients))),
        "n_per_class": {classifier.classes[k]: int(counts[k]) for k in (0, 1)},
        "operating_point": {**stored_point(point), "target_sensitivity": point["target_sensitivity"]},
        "out_of_fold": rates(calls), "stored_operating_point": rates(stored),
    }
    path = site_file(name, source, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    record["path"] = str(path)
    return record


def load_classifier(source: str | os.PathLike[str], *, site: str | None = None, roi: str | None = None) -> Classifier:
    """:meth:`Classifier.load`, with site ``site``'s operating point in place of the stored one when given."""
    classifier = Classifier.load(source, roi=roi)
    if site is not None:
        classifier.set_operating_point(load_site(site, source)["operating_point"])
    return classifier
