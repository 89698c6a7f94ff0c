"""Runs side by side: model, options, size, and each metric with its interval, as a table and a CSV.

With ``data`` every run is evaluated on it (:func:`~lungscope.evaluation.evaluate.evaluate_run`: metrics at each
run's operating threshold, patient-bootstrap 95% intervals). Without, each run's own validation record is used:
accuracy and ROC-AUC of its best epoch from ``metrics.csv``, with no interval (the ``source`` column says which).
Validation splits differ between runs unless they share a seed and data, so only the ``data`` comparison is fair.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from lungscope.checkpoint import BEST
from lungscope.errors import ConfigError
from lungscope.evaluation.formatting import format_ci
from lungscope.evaluation.metrics import METRIC_NAMES
from lungscope.models.layers import count_parameters
from lungscope.text import format_table

VALIDATION_SOURCE = "validation, best epoch (no CI)"
_VALIDATION_METRICS = {"accuracy": "val_accuracy", "roc_auc": "val_auc"}
_DESCRIPTION = ["model", "options", "parameters", "image_size", "epochs_run", "best_epoch", "threshold", "source"]


def _options(options: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in sorted(options.items())) or "-"


def _run_row(run_dir: Path) -> dict[str, Any]:
    """What a run is: from its checkpoint (model, options, parameters, image size) and ``summary.json``."""
    from lungscope.inference import Classifier  # torch-heavy: imported when a comparison is made

    if not (run_dir / BEST).is_file():
        raise ConfigError(f"{run_dir}: not a finished run folder (no best.pt)")
    classifier = Classifier.load(run_dir)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return {
        "run": str(run_dir),
        "model": classifier.config["model"],
        "options": _options(classifier.config.get("model_options") or {}),
        "parameters": count_parameters(classifier.model),
        "image_size": classifier.image_size,
        "epochs_run": summary.get("epochs_run"),
        "best_epoch": summary.get("best_epoch"),
    }


def _validation_metrics(run_dir: Path, best_epoch: int | None) -> dict[str, float]:
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    if "members" in summary:  # an ensemble: its joined network was validated once, after its members' epochs
        row = pd.DataFrame([summary])
    else:
        path = run_dir / "metrics.csv"
        if not path.is_file():
            raise ConfigError(f"{run_dir}: no metrics.csv to take validation metrics from")
        frame = pd.read_csv(path)
        row = frame[frame["epoch"] == best_epoch] if best_epoch else frame.tail(1)
        if row.empty:
            raise ConfigError(f"{path}: no row for the best epoch {best_epoch}")
    values: dict[str, Any] = {"threshold": None, "source": VALIDATION_SOURCE}
    for name, column in _VALIDATION_METRICS.items():
        values.update({name: float(row[column].iloc[0]), f"{name}_ci_low": math.nan, f"{name}_ci_high": math.nan})
    return values


def _evaluated_metrics(evaluation: Any) -> dict[str, Any]:
    report = evaluation.report
    values: dict[str, Any] = {
        "threshold": report["threshold"],
        "source": f"{report['data']} ({report['n_images']} images, bootstrap 95% CI)",
    }
    for name in METRIC_NAMES:
        metric = report["metrics"].get(name) or {}
        low, high = metric.get("ci95") or (None, None)
        values.update({name: metric.get("value"), f"{name}_ci_low": low, f"{name}_ci_high": high})
    return values


def compare_runs(
    run_dirs: Sequence[str | os.PathLike[str]],
    data: str | os.PathLike[str] | None = None,
    *,
    labels: str | None = None,
    split: str | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per run: ``run``, ``model``, ``options``, ``parameters``, ``image_size``, ``epochs_run``,
    ``best_epoch``, ``threshold``, ``source`` and, per metric, ``<name>``, ``<name>_ci_low``, ``<name>_ci_high``
    (NaN where there is no interval). ``data``, ``labels`` and ``split`` are passed to ``evaluate_run``."""
    if not run_dirs:
        raise ConfigError("give at least one run folder to compare")
    if data is None and (split is not None or labels is not None):
        raise ConfigError("a split or label scheme applies only to data to evaluate on (--data)")
    rows = []
    for run_dir in map(Path, run_dirs):
        row = _run_row(run_dir)
        if data is None:
            row.update(_validation_metrics(run_dir, row["best_epoch"]))
        else:
            from lungscope.evaluation.evaluate import evaluate_run

            evaluation = evaluate_run(run_dir, data, labels=labels, split=split, n_resamples=n_resamples, seed=seed)
            row.update(_evaluated_metrics(evaluation))
        rows.append(row)
    frame = pd.DataFrame(rows)
    metrics = [name for name in METRIC_NAMES if name in frame]
    columns = ["run", *_DESCRIPTION] + [f"{m}{s}" for m in metrics for s in ("", "_ci_low", "_ci_high")]
    return frame[columns]


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_comparison(frame: pd.DataFrame) -> str:
    """A terminal table with the runs as columns and one line per property and metric (``0.912 (0.881-0.940)``)."""
    names = [Path(run).name or run for run in frame["run"]]
    lines: list[list[str]] = [["", *(names if len(set(names)) == len(names) else frame["run"])]]
    for column in _DESCRIPTION:
        lines.append([column.replace("_", " "), *map(_cell, frame[column].tolist())])
    for name in (c for c in METRIC_NAMES if c in frame):
        cells = []
        for value, low, high in zip(frame[name], frame[f"{name}_ci_low"], frame[f"{name}_ci_high"]):
            interval = () if _cell(low) == "-" else (low, high)
            cells.append("-" if _cell(value) == "-" else format_ci(value, *interval))
        lines.append([name.replace("_", " "), *cells])
    return format_table(lines)
