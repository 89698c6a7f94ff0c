"""Patient-grouped k-fold cross-validation, and cross-site validation of the tuberculosis sets.

``OUT/folds.csv`` is the fold manifest (``path,label,patient_id,split,fold``; ``split`` is the source's own);
``OUT/fold_k/`` is the run of fold k (fold k validates, the others train); ``OUT/cv_summary.json`` and
``OUT/cv_summary.csv`` hold each fold's val_auc, val_accuracy and val_loss at its best epoch, their mean and
sample standard deviation (ddof=1), and the pooled out-of-fold ROC-AUC with its patient-bootstrap 95% CI: every image
scored by the best checkpoint of the fold that validated it (``OUT/oof_predictions.csv``), one AUC over them all.

:func:`cross_site` trains on one site's images and tests on the other's (Shenzhen ``CHNCXR_*`` and Montgomery
``MCUCXR_*``, :data:`SITES`), both ways: ``OUT/<TRAIN>_to_<TEST>/`` is the run (its own site split by patient into
train and val), ``test_predictions.csv`` its scores of the other site, ``OUT/cross_site.json`` the summary.
Re-running the same command skips finished runs and resumes an interrupted one.
"""

from __future__ import annotations

import dataclasses
import filecmp
import itertools
import json
import os
import sys
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from lungscope.checkpoint import BEST, LAST, load_checkpoint
from lungscope.data.datasets import scan_dataset
from lungscope.data.labels import classes_for
from lungscope.data.splits import kfold_by_patient, save_manifest, split_by_patient, subsample_by_patient
from lungscope.data.transforms import Preprocessing
from lungscope.device import select_device
from lungscope.errors import ConfigError, DatasetError
from lungscope.evaluation.bootstrap import patient_bootstrap
from lungscope.models import create_model
from lungscope.progress import progress_bar
from lungscope.training.config import TrainConfig
from lungscope.training.engine import predict_files
from lungscope.training.ensemble import MEMBERS
from lungscope.training.trainer import train

METRICS = ("val_auc", "val_accuracy", "val_loss")
_LOCATION_KEYS = ("data", "out", "manifest")  # where a run reads and writes, not how it trains
SITES = {"CHNCXR": "Shenzhen", "MCUCXR": "Montgomery"}  # tuberculosis sets: file-name prefix -> site


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
    if "members" in summary:  # an ensemble: the joined network's validation metrics, no epochs of its own
        return {"fold": fold, "best_epoch": None, **{m: summary[m] for m in METRICS},
                "n_train": summary["n_train"], "n_val": summary["n_val"]}
    metrics = pd.read_csv(run / "metrics.csv").set_index("epoch")
    best = metrics.loc[summary["best_epoch"]] if summary["best_epoch"] in metrics.index else None
    row = {"fold": fold, "best_epoch": summary["best_epoch"]}
    row |= {m: float(best[m]) if best is not None else float("nan") for m in METRICS}
    return row | {"n_train": summary["n_train"], "n_val": summary["n_val"]}


def site_of(path: str | os.PathLike[str]) -> str | None:
    """The site prefix (a key of :data:`SITES`) a file's name starts with, or None."""
    prefix = PurePath(path).name.split("_", 1)[0].upper()
    return prefix if prefix in SITES else None


def _frame(config: TrainConfig) -> pd.DataFrame:
    """The images of ``config.data`` (a patient-grouped subset with ``limit``), after checking the request."""
    if not config.out:
        raise ConfigError("an output folder (--out DIR) is required")
    if config.manifest:
        raise ConfigError(f"cross-validation makes its own splits from --data; drop the manifest {config.manifest}")
    if config.extra_train:
        raise ConfigError(f"cross-validation scores folds of --data alone; drop extra_train {config.extra_train}")
    if not config.data:
        raise ConfigError("give the data to cross-validate with --data DIR (or data: in --config)")
    frame = scan_dataset(config.data, labels=config.labels)
    return subsample_by_patient(frame, config.limit, seed=config.seed) if config.limit else frame


def _train_run(config: TrainConfig, run: Path, split: pd.DataFrame, progress: bool | None) -> None:
    """Train ``config`` in ``run`` on ``split``'s train and val rows; resume it if interrupted, nothing if finished."""
    run_config = dataclasses.replace(config, out=str(run), manifest=str(run / "split.csv"))
    if (run / "config.yaml").is_file():
        check_same_options(TrainConfig.from_yaml(run / "config.yaml").to_dict(), run_config, run)
    save_or_check_manifest(split, run / "split.csv")  # the trainer reads it and keeps it as the run's own
    if (run / "summary.json").is_file():
        return
    try:
        train(run_config, resume=(run / LAST).is_file() or (run / MEMBERS).is_dir(), progress=progress)
    except KeyboardInterrupt:
        print(f"interrupted in {run.name}; re-run the same command to continue (finished runs are kept, this one "
              "resumes)", file=sys.stderr)
        raise


def score_with_run(run: Path, rows: pd.DataFrame, *, progress: bool | None = None) -> pd.DataFrame:
    """``rows``' readable images, each with a probability column per class (``p_<CLASS>``) from ``run``'s
    ``best.pt``, preprocessed as the run validated them."""
    best = load_checkpoint(run / BEST, kind="classifier")
    config = TrainConfig.from_dict(best["config"])
    model = create_model(config.model, num_classes=len(best["classes"]), **config.model_options)
    model.load_state_dict(best["model"])
    probabilities, kept = predict_files(model, Preprocessing.of_checkpoint(best), rows["path"].tolist(),
                                        select_device(config.device), show=progress, desc=f"score {run.name}")
    scored = rows.iloc[kept].reset_index(drop=True)
    return scored.assign(**{f"p_{name}": probabilities[:, i] for i, name in enumerate(best["classes"])})


def _auc(targets: np.ndarray, probabilities: np.ndarray) -> float:
    """ROC-AUC: of the second class for two, else the one-vs-rest macro mean."""
    if probabilities.shape[1] == 2:
        return float(roc_auc_score(targets, probabilities[:, 1]))
    return float(roc_auc_score(targets, probabilities, multi_class="ovr", labels=range(probabilities.shape[1])))


def auc_with_ci(scored: pd.DataFrame, classes: tuple[str, ...], *, seed: int = 0) -> dict[str, Any]:
    """ROC-AUC of :func:`score_with_run`'s output with its patient-bootstrap 95% CI (1,000 resamples)."""
    targets = scored["label"].map(classes.index).to_numpy()
    probabilities = scored[[f"p_{name}" for name in classes]].to_numpy()
    value, low, high = patient_bootstrap(_auc, targets, probabilities, scored["patient_id"].to_numpy(), seed=seed)
    return {"auc": value, "ci95": [low, high], "n_images": len(scored),
            "n_patients": int(scored["patient_id"].nunique())}


def cross_validate(config: TrainConfig, folds: int, *, progress: bool | None = None) -> dict[str, Any]:
    """Train ``folds`` runs on patient-grouped folds of ``config.data`` into ``config.out``; returns the summary."""
    frame = kfold_by_patient(_frame(config), folds, seed=config.seed)
    out = Path(config.out)
    save_or_check_manifest(frame, out / "folds.csv")

    rows, scored = [], []
    for fold in progress_bar(range(folds), desc="cv", unit="fold", show=progress):
        run = out / f"fold_{fold}"
        sides = np.where(frame["fold"] == fold, "val", "train")
        _train_run(config, run, frame.drop(columns="fold").assign(split=sides), progress)
        rows.append(_fold_result(fold, run))
        scored.append(score_with_run(run, frame[frame["fold"] == fold], progress=progress))

    out_of_fold = pd.concat(scored, ignore_index=True)
    out_of_fold.to_csv(out / "oof_predictions.csv", index=False)
    pooled = auc_with_ci(out_of_fold, classes_for(config.labels), seed=config.seed)
    table = pd.DataFrame(rows)
    mean, std = table[list(METRICS)].mean(), table[list(METRICS)].std(ddof=1)
    summary = {
        "folds": folds, "model": config.model, "monitor": config.monitor,
        "n_images": len(frame), "n_patients": int(frame["patient_id"].nunique()),
        "per_fold": rows, "mean": mean.to_dict(), "std": std.to_dict(), "pooled_val_auc": pooled,
    }
    (out / "cv_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    aggregate = pd.DataFrame([
        {"fold": "mean", **mean.to_dict()}, {"fold": "std", **std.to_dict()},
        {"fold": "pooled", "val_auc": pooled["auc"], "n_val": pooled["n_images"],
         "val_auc_low": pooled["ci95"][0], "val_auc_high": pooled["ci95"][1]},
    ])
    combined = pd.concat([table, aggregate], ignore_index=True)
    counts = ["best_epoch", "n_train", "n_val"]
    combined[counts] = combined[counts].astype("Int64")  # integers stay integers beside the blank mean/std cells
    combined.to_csv(out / "cv_summary.csv", index=False)
    return summary


def cross_site(config: TrainConfig, *, progress: bool | None = None) -> dict[str, Any]:
    """Train on each site of :data:`SITES` (its patients split into train and val by ``config.val_fraction``), test
    on the other site: ROC-AUC with patient-bootstrap 95% CI there, beside the home validation AUC."""
    frame = _frame(config)
    sites = frame["path"].map(site_of)
    counts = sites.value_counts()
    if any(counts.get(site, 0) == 0 for site in SITES):
        found = ", ".join(f"{counts.get(site, 0)} {site}_*" for site in SITES)
        raise DatasetError(f"{config.data}: cross-site validation needs images of both sites; found {found}")
    out = Path(config.out)
    classes = classes_for(config.labels)
    runs = []
    for home, away in progress_bar(list(itertools.permutations(SITES)), desc="cross-site", unit="run",
                                   show=progress):
        run = out / f"{home}_to_{away}"
        split = split_by_patient(frame[sites == home], val=config.val_fraction, test=0, seed=config.seed)
        test = frame[sites == away].assign(split="test")
        _train_run(config, run, pd.concat([split, test], ignore_index=True), progress)
        scored = score_with_run(run, test, progress=progress)
        scored.to_csv(run / "test_predictions.csv", index=False)
        result = _fold_result(0, run)
        runs.append({"train_site": home, "test_site": away, "best_epoch": result["best_epoch"],
                     "n_train": result["n_train"], "n_val": result["n_val"], "val_auc": result["val_auc"],
                     "test_auc": auc_with_ci(scored, classes, seed=config.seed)})
    summary = {"model": config.model, "monitor": config.monitor, "sites": SITES, "runs": runs}
    (out / "cross_site.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
