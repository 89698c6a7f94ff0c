"""Patient-grouped k-fold cross-validation: a run folder per fold and a summary of the folds' best metrics.

``OUT/folds.csv`` is the fold manifest (``path,label,patient_id,split,fold``; ``split`` is the source's own);
``OUT/fold_k/`` is the run of fold k (fold k validates, the others train); ``OUT/cv_summary.json`` and
``OUT/cv_summary.csv`` hold each fold's val_auc, val_accuracy and val_loss at its best epoch, and their mean and
sample standard deviation (ddof=1). Re-running the same command skips finished folds and resumes an interrupted one.
"""

from __future__ import annotations

import dataclasses
import filecmp
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lungscope.data.datasets import scan_dataset
from lungscope.data.splits import kfold_by_patient, save_manifest, subsample_by_patient
from lungscope.errors import ConfigError
from lungscope.progress import progress_bar
from lungscope.training.config import TrainConfig
from lungscope.training.trainer import train

METRICS = ("val_auc", "val_accuracy", "val_loss")
_LOCATION_KEYS = ("data", "out", "manifest")  # where a run reads and writes, not how it trains


def save_or_check_manifest(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` as a manifest at ``path``; if one is there (a re-run), it must hold exactly these rows."""
    if not path.exists():
        save_manifest(frame, path)
        return
    fresh = path.with_name(f".{path.name}.{os.getpid()}")
    save_manifest(frame, fresh)
    try:
        same = filecmp.cmp(path, fresh, shallow=False)
    finally:
        fresh.unlink()
    if not same:
        raise ConfigError(
            f"{path} was made from other data, labels, limit, seed or folds than this run; "
            "re-run with the same options or choose another --out"
        )


def check_same_options(saved: dict[str, Any], config: TrainConfig, where: Path | str) -> None:
    """ConfigError naming the options that differ between ``saved`` (an earlier run's config) and ``config``."""
    current = config.to_dict()
    changed = sorted(k for k in current if k not in _LOCATION_KEYS and saved.get(k) != current[k])
    if changed:
        details = ", ".join(f"{k} {saved.get(k)!r} -> {current[k]!r}" for k in changed)
        raise ConfigError(f"{where} was made with other options ({details}); re-run with them or choose another --out")


def _fold_result(fold: int, run: Path) -> dict[str, Any]:
    """A finished fold's row: its best epoch (by the monitored metric) and the metrics of that epoch."""
    summary = json.loads((run / "summary.json").read_text())
    metrics = pd.read_csv(run / "metrics.csv").set_index("epoch")
    best = metrics.loc[summary["best_epoch"]] if summary["best_epoch"] in metrics.index else None
    row = {"fold": fold, "best_epoch": summary["best_epoch"]}
    row |= {m: float(best[m]) if best is not None else float("nan") for m in METRICS}
    return row | {"n_train": summary["n_train"], "n_val": summary["n_val"]}


def cross_validate(config: TrainConfig, folds: int, *, progress: bool | None = None) -> dict[str, Any]:
    """Train ``folds`` runs on patient-grouped folds of ``config.data`` into ``config.out``; returns the summary."""
    if not config.out:
        raise ConfigError("an output folder (--out DIR) is required")
    if config.manifest:
        raise ConfigError(f"cross-validation makes its own folds from --data; drop the manifest {config.manifest}")
    if not config.data:
        raise ConfigError("give the data to cross-validate with --data DIR (or data: in --config)")
    out = Path(config.out)
    frame = scan_dataset(config.data, labels=config.labels)
    if config.limit:
        frame = subsample_by_patient(frame, config.limit, seed=config.seed)
    frame = kfold_by_patient(frame, folds, seed=config.seed)
    save_or_check_manifest(frame, out / "folds.csv")

    rows = []
    for fold in progress_bar(range(folds), desc="cv", unit="fold", show=progress):
        run = out / f"fold_{fold}"
        fold_config = dataclasses.replace(config, out=str(run), manifest=str(run / "split.csv"))
        if (run / "config.yaml").is_file():
            check_same_options(TrainConfig.from_yaml(run / "config.yaml").to_dict(), fold_config, run)
        if not (run / "summary.json").is_file():
            resume = (run / "last.pt").is_file()
            if not resume:  # the trainer reads this manifest and keeps it as the run's own split.csv
                sides = np.where(frame["fold"] == fold, "val", "train")
                save_manifest(frame.drop(columns="fold").assign(split=sides), run / "split.csv")
            try:
                train(fold_config, resume=resume, progress=progress)
            except KeyboardInterrupt:
                print(f"cross-validation interrupted in fold {fold}; re-run the same command to continue "
                      "(finished folds are kept, this one resumes)", file=sys.stderr)
                raise
        rows.append(_fold_result(fold, run))

    table = pd.DataFrame(rows)
    mean, std = table[list(METRICS)].mean(), table[list(METRICS)].std(ddof=1)
    summary = {
        "folds": folds, "model": config.model, "monitor": config.monitor,
        "n_images": len(frame), "n_patients": int(frame["patient_id"].nunique()),
        "per_fold": rows, "mean": mean.to_dict(), "std": std.to_dict(),
    }
    (out / "cv_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    aggregate = pd.DataFrame([{"fold": "mean", **mean.to_dict()}, {"fold": "std", **std.to_dict()}])
    combined = pd.concat([table, aggregate], ignore_index=True)
    counts = ["best_epoch", "n_train", "n_val"]
    combined[counts] = combined[counts].astype("Int64")  # integers stay integers beside the blank mean/std cells
    combined.to_csv(out / "cv_summary.csv", index=False)
    return summary
