"""Evaluating a trained run on a labelled folder or manifest: predictions, metrics with patient-bootstrap 95%
intervals at the run's operating threshold and at 0.5, and calibration.

The threshold and the temperature come from the run (fitted on its validation split when training ended, or by
:func:`~lungscope.evaluation.operating.calibrate_run`); nothing is fitted on the data being evaluated.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from lungscope.data.datasets import scan_dataset
from lungscope.data.labels import classes_for, decide
from lungscope.data.splits import load_manifest
from lungscope.errors import ConfigError, DatasetError
from lungscope.evaluation.calibration import expected_calibration_error, reliability
from lungscope.evaluation.formatting import describe_calibration, format_metric, format_probability
from lungscope.evaluation.metrics import (
    METRIC_NAMES,
    binary_metric_functions,
    confusion,
    multiclass_metric_functions,
    with_ci,
)
from lungscope.evaluation.operating import CALIBRATION_FILE
from lungscope.inference import Classifier, apply_temperature
from lungscope.progress import progress_bar
from lungscope.text import format_table


@dataclass
class Evaluation:
    """The outcome of :func:`evaluate_run`.

    ``predictions`` is the predictions CSV (one row per scored image); ``report`` the JSON report;
    ``raw_probabilities`` (N x C, before temperature scaling) and ``targets`` (class indices) follow its rows.
    """

    report: dict[str, Any]
    predictions: pd.DataFrame
    raw_probabilities: np.ndarray
    targets: np.ndarray

    @property
    def classes(self) -> list[str]:
        return self.report["classes"]

    @property
    def threshold(self) -> float | None:
        """The operating threshold on ``probabilities[:, 1]`` (binary runs), or None: the largest decides."""
        return self.report["threshold"]

    @property
    def probabilities(self) -> np.ndarray:
        """The probabilities the metrics were computed on: calibrated when ``report["calibrated"]``."""
        if not self.report["calibrated"]:
            return self.raw_probabilities
        calibration = self.report["calibration"]
        return apply_temperature(self.raw_probabilities, calibration["temperature"], calibration["bias"])

    def save_json(self, path: str | os.PathLike[str]) -> Path:
        return _write(Path(path), json.dumps(self.report, indent=2) + "\n")

    def save_predictions(self, path: str | os.PathLike[str]) -> Path:
        return _write(Path(path), self.predictions.to_csv(index=False))

    def format(self) -> str:
        """A terminal summary: counts, a metric table (value and 95% CI) at the threshold and at 0.5, calibration."""
        return format_report(self.report)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _scheme(classifier: Classifier, labels: str | None) -> str:
    """The label scheme to read the data with: the run's unless given, and it must name the run's classes."""
    scheme = labels or classifier.config.get("labels", "binary")
    if list(classes_for(scheme)) != classifier.classes:
        raise ConfigError(
            f"the run predicts {', '.join(classifier.classes)}; the {scheme} labels are "
            f"{', '.join(classes_for(scheme))}: evaluate with the run's label scheme"
        )
    return scheme


def _images(data: str | os.PathLike[str], scheme: str, split: str | None) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    frame, skipped = scan_dataset(data, scheme, strict=False, with_skipped=True)
    if split is not None:
        available = sorted(set(frame["split"]))
        frame = frame[frame["split"] == split].reset_index(drop=True)
        if frame.empty:
            raise DatasetError(f"{data}: no images in split {split!r}; the splits are {', '.join(available)}")
    return frame, skipped


def _overlap(run_dir: Path, frame: pd.DataFrame) -> dict[str, int] | None:
    """How many evaluated images and patients the run trained or validated on (None without a split.csv)."""
    if not (run_dir / "split.csv").is_file():
        return None
    seen = load_manifest(run_dir / "split.csv")
    seen = seen[seen["split"].isin(["train", "val"])]
    return {
        "images": int(frame["path"].map(os.path.abspath).isin(set(seen["path"].map(os.path.abspath))).sum()),
        "patients": int(frame["patient_id"].drop_duplicates().isin(set(seen["patient_id"])).sum()),
    }


def _operating_point(run_dir: Path) -> dict[str, Any]:
    """The run's calibration.json (how the threshold was chosen), or {}."""
    path = run_dir / CALIBRATION_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def metrics_with_ci(
    probabilities: np.ndarray, targets: np.ndarray, patients: np.ndarray, threshold: float | None, **bootstrap: Any
) -> tuple[dict[str, Any], np.ndarray, list[dict[str, Any]] | None]:
    """(metrics with patient-bootstrap CIs, confusion matrix, per-class metrics with CIs or None for a binary run):
    binary probabilities decided at ``threshold``, more classes (``threshold=None``) by the largest."""
    n_classes = probabilities.shape[1]
    matrix = confusion(targets, decide(probabilities, threshold), n_classes)
    if threshold is not None:
        scores = probabilities[:, 1]
        return with_ci(binary_metric_functions(threshold), targets, scores, patients, **bootstrap), matrix, None
    overall, per_class = multiclass_metric_functions(n_classes)
    classes = [with_ci(functions, targets, probabilities, patients, **bootstrap) for functions in per_class]
    return with_ci(overall, targets, probabilities, patients, **bootstrap), matrix, classes


def _notes(classes: Sequence[str], counts: dict[str, int], metrics: dict[str, Any], overlap: dict[str, int] | None,
           stored_threshold: bool) -> list[str]:
    notes = []
    if missing := [c for c in classes if not counts.get(c)]:
        notes.append(f"the data hold no {', '.join(missing)} image: metrics that need every class are undefined (null)")
    if undefined := [name for name, m in metrics.items() if m["value"] is None]:
        notes.append(f"undefined on these data (null): {', '.join(undefined)}")
    if overlap and (overlap["images"] or overlap["patients"]):
        notes.append(
            f"{overlap['images']} image(s) and {overlap['patients']} patient(s) of these data were in the run's "
            "training or validation split: the metrics are optimistic; evaluate held-out patients (--split test)"
        )
    if not stored_threshold:
        notes.append("the run stores no operating threshold (run `lungscope calibrate RUN_DIR`); 0.5 is used")
    return notes


def evaluate_run(
    run_dir: str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    labels: str | None = None,
    split: str | None = None,
    calibrated: bool = False,
    n_resamples: int = 1000,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool | None = None,
    roi: str | None = None,
    classifier: Classifier | None = None,
) -> Evaluation:
    """Predict every image of ``data`` (a folder or CSV manifest, rows of ``split`` only if given) with the run in
    ``run_dir`` (a run folder or a ``best.pt``) and measure it.

    Binary runs decide at the run's stored operating threshold (the calibrated or the raw one to match
    ``calibrated``; both make the same calls) and are also measured at 0.5; multi-class runs decide by the largest
    probability. Every metric carries a 95% interval from ``n_resamples`` bootstrap resamples of patients.
    Unreadable files are reported under ``unreadable`` and left out. ``roi``: see :meth:`Classifier.load`.
    ``classifier``: the run already loaded (e.g. with a site's operating point, test-time augmentation or ensemble
    members), instead of loading ``run_dir``.
    """
    run_dir = Path(run_dir)
    if classifier is None:
        classifier = Classifier.load(run_dir, roi=roi)
    scheme = _scheme(classifier, labels)
    frame, skipped = _images(data, scheme, split)
    paths = frame["path"].tolist()
    bar = progress_bar(total=len(paths), desc="predict", unit="image", show=progress)
    predictions = []
    for prediction in classifier.predict_files(paths, batch_size=batch_size, calibrated=False, upright=False):
        predictions.append(prediction)
        bar.update()
    bar.close()
    unreadable = skipped + [{"path": p.path, "error": p.error} for p in predictions if p.error is not None]
    scored = np.array([p.error is None for p in predictions], dtype=bool)
    if not scored.any():
        raise DatasetError(f"{data}: none of the {len(paths)} images could be read, e.g. {unreadable[-1]['path']}")
    frame = frame[scored].reset_index(drop=True)
    raw = np.stack([cast(np.ndarray, p.probabilities) for p in predictions if p.error is None])
    classes = classifier.classes
    targets = frame["label"].map(classes.index).to_numpy(np.int64)
    patients = frame["patient_id"].to_numpy()
    probabilities = classifier.calibrate(raw) if calibrated else raw

    binary = len(classes) == 2
    stored = classifier.threshold if calibrated else classifier.raw_threshold
    threshold = (0.5 if stored is None else float(stored)) if binary else None
    bootstrap = {"n_resamples": n_resamples, "seed": seed}
    metrics, matrix, per_class = metrics_with_ci(probabilities, targets, patients, threshold, **bootstrap)
    counts = frame["label"].value_counts().to_dict()
    overlap = _overlap(run_dir, frame) if run_dir.is_dir() else None

    report: dict[str, Any] = {
        "run": str(run_dir),
        "data": str(data),
        "split": split,
        "labels": scheme,
        "classes": classes,
        "n_images": len(frame),
        "n_patients": int(frame["patient_id"].nunique()),
        "class_counts": {c: int(counts.get(c, 0)) for c in classes},
        "threshold": threshold,
        "operating_point": _operating_point(run_dir) if run_dir.is_dir() else {},
        "calibrated": calibrated,
        "n_resamples": n_resamples,
        "seed": seed,
        "metrics": metrics,
        "confusion_matrix": matrix.tolist(),
    }
    if binary:
        report["metrics_at_0_5"], matrix_half, _ = metrics_with_ci(probabilities, targets, patients, 0.5, **bootstrap)
        report["confusion_matrix_at_0_5"] = matrix_half.tolist()
    else:
        report["per_class"] = dict(zip(classes, cast(list[dict[str, Any]], per_class)))  # set for multiclass
    table = reliability(probabilities, targets)
    report["calibration"] = {
        "ece": expected_calibration_error(probabilities, targets),
        "ece_uncalibrated": expected_calibration_error(raw, targets),
        "ece_calibrated": expected_calibration_error(classifier.calibrate(raw), targets),
        "temperature": classifier.temperature,
        "bias": classifier.bias,
        "reliability": {key: [None if np.isnan(v) else float(v) for v in values] for key, values in table.items()},
    }
    report["unreadable"] = unreadable
    report["overlap_with_training"] = overlap
    report["notes"] = _notes(classes, counts, metrics, overlap, not binary or stored is not None)
    return Evaluation(report, _prediction_frame(frame, probabilities, classes, threshold), raw, targets)


def _prediction_frame(
    frame: pd.DataFrame, probabilities: np.ndarray, classes: Sequence[str], threshold: float | None
) -> pd.DataFrame:
    """path, patient_id, label, probability (binary) or p_<class> (more classes), prediction; class names."""
    out = frame[["path", "patient_id", "label"]].copy()
    if threshold is not None:
        out["probability"] = probabilities[:, 1]
    else:
        for k, name in enumerate(classes):
            out[f"p_{name}"] = probabilities[:, k]
    out["prediction"] = np.asarray(classes)[decide(probabilities, threshold)]
    return out


def format_report(report: dict[str, Any]) -> str:
    """The terminal view of an evaluation report."""
    counts = ", ".join(f"{n} {c}" for c, n in report["class_counts"].items())
    lines = [f"{report['n_images']} images of {report['n_patients']} patients ({counts}); "
             f"{'calibrated' if report['calibrated'] else 'uncalibrated'} probabilities"]
    columns: list[tuple[str, Any]] = [("metric", None)]
    if report["threshold"] is None:
        columns.append(("largest probability (95% CI)", report["metrics"]))
    else:
        rule = report["operating_point"].get("rule", "stored")
        columns.append((f"threshold {format_probability(report['threshold'])} ({rule}) (95% CI)", report["metrics"]))
        columns.append(("threshold 0.5 (95% CI)", report["metrics_at_0_5"]))
    rows = [[title for title, _ in columns]]
    rows += [[name] + [format_metric(values[name]) for _, values in columns[1:]] for name in METRIC_NAMES]
    lines += ["", format_table(rows)]
    if report["threshold"] is None:
        for name, values in report["per_class"].items():
            lines.append(f"{name}: " + ", ".join(f"{k} {format_metric(v)}" for k, v in values.items()))
    matrix = report["confusion_matrix"]
    lines += ["", "confusion matrix (rows true, columns predicted: " + ", ".join(report["classes"]) + ")"]
    lines += ["  " + "  ".join(f"{n:6d}" for n in row) for row in matrix]
    calibration = report["calibration"]
    lines += ["", (f"expected calibration error {calibration['ece']:.4f} "
                   f"(uncalibrated {calibration['ece_uncalibrated']:.4f}, "
                   f"after {describe_calibration(calibration)}: {calibration['ece_calibrated']:.4f})")]
    if report["unreadable"]:
        lines += ["", f"{len(report['unreadable'])} file(s) skipped:"]
        lines += [f"  {u['path']}: {u['error']}" for u in report["unreadable"][:10]]
        if len(report["unreadable"]) > 10:
            lines.append(f"  ... and {len(report['unreadable']) - 10} more (see the JSON report)")
    lines += [f"note: {note}" for note in report["notes"]]
    return "\n".join(lines)
