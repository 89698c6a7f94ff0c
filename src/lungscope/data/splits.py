"""Patient-grouped, label-stratified train/val/test splits and k folds, and the CSV manifest that records them.

A patient is never on two sides. Fractions are fractions of *patients*; as the split is random within each label,
image fractions follow on average. A patient whose images carry several labels (in the Kermany set 808 children
have both bacterial and viral images) is stratified by their most frequent label.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from lungscope.errors import ConfigError, DatasetError

MANIFEST_COLUMNS: tuple[str, ...] = ("path", "label", "patient_id", "split")


def _require(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DatasetError(f"missing column(s) {', '.join(missing)}; have {', '.join(map(str, frame.columns))}")


def _patient_labels(frame: pd.DataFrame) -> pd.Series:
    """Each patient's most frequent label (ties: the alphabetically first), indexed by sorted patient id."""
    counts = frame.groupby(["patient_id", "label"]).size().rename("n").reset_index()
    counts = counts.sort_values(["patient_id", "n", "label"], ascending=[True, False, True])
    return counts.drop_duplicates("patient_id").set_index("patient_id")["label"]


def _hold_out(patients: pd.Series, fraction: float, seed: int) -> tuple[pd.Series, pd.Series]:
    """(rest, held out): a random ``fraction`` of ``patients`` (id -> label), stratified by label when possible."""
    try:
        return train_test_split(patients, test_size=fraction, stratify=patients, random_state=seed)
    except ValueError as error:  # a label with a single patient, or fewer patients to hold out than labels
        reason = error
    try:
        rest, held = train_test_split(patients, test_size=fraction, random_state=seed)
    except ValueError as error:
        raise DatasetError(f"{len(patients)} patient(s) are too few to hold out {fraction:.0%}: {error}") from None
    warnings.warn(f"split of {len(patients)} patients not stratified by label: {reason}", stacklevel=3)
    return rest, held


def split_by_patient(frame: pd.DataFrame, *, val: float = 0.15, test: float = 0.15, seed: int = 0) -> pd.DataFrame:
    """A copy of ``frame`` (columns ``label``, ``patient_id``) with ``split`` set to train, val or test.

    ``val`` and ``test`` are fractions of all patients, each in [0, 1) with a sum below 1 (else ConfigError); 0 leaves
    that side empty. The same frame and seed always give the same split.
    """
    for name, fraction in (("val", val), ("test", test)):
        if not 0 <= fraction < 1:
            raise ConfigError(f"{name} fraction must be in [0, 1), not {fraction}")
    if val + test >= 1:
        raise ConfigError(f"val + test fractions must be below 1 to leave a training set, not {val} + {test}")
    _require(frame, ("label", "patient_id"))
    rest = _patient_labels(frame)
    side = pd.Series("train", index=rest.index)
    if test:
        rest, held = _hold_out(rest, test, seed)
        side[held.index] = "test"
    if val:
        _, held = _hold_out(rest, val / (1 - test), seed)
        side[held.index] = "val"
    out = frame.copy()
    out["split"] = frame["patient_id"].map(side).to_numpy()
    return out


def subsample_by_patient(frame: pd.DataFrame, n_images: int, *, seed: int = 0) -> pd.DataFrame:
    """About ``n_images`` rows of ``frame``: whole patients, stratified by label (for quick runs and tests)."""
    if n_images < 1:
        raise ConfigError(f"the number of images to keep must be positive, not {n_images}")
    if n_images >= len(frame):
        return frame.copy()
    _require(frame, ("label", "patient_id"))
    _, kept = _hold_out(_patient_labels(frame), n_images / len(frame), seed)
    return frame[frame["patient_id"].isin(kept.index)].reset_index(drop=True)


def kfold_by_patient(frame: pd.DataFrame, k: int, *, seed: int = 0) -> pd.DataFrame:
    """A copy of ``frame`` with an integer ``fold`` in 0..k-1: scikit-learn's StratifiedGroupKFold by patient."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ConfigError(f"k must be an integer of at least 2, not {k!r}")
    _require(frame, ("label", "patient_id"))
    if k > (n_patients := frame["patient_id"].nunique()):
        raise DatasetError(f"cannot make {k} folds of {n_patients} patient(s)")
    folds = np.empty(len(frame), dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=int(k), shuffle=True, random_state=seed)
    for fold, (_, held) in enumerate(splitter.split(np.zeros(len(frame)), frame["label"], frame["patient_id"])):
        folds[held] = fold
    out = frame.copy()
    out["fold"] = folds
    return out


def save_manifest(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write ``path,label,patient_id,split[,fold]`` as CSV, paths as given (absolute from :func:`scan_dataset`)."""
    columns = [*MANIFEST_COLUMNS, *(["fold"] if "fold" in frame.columns else [])]
    _require(frame, columns)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, columns=columns, index=False)


def load_manifest(path: str | os.PathLike[str], *, required: Sequence[str] = MANIFEST_COLUMNS) -> pd.DataFrame:
    """Read a CSV manifest: every column as text, ``fold`` (if present) as integers, relative paths resolved
    against the CSV's folder. Raises DatasetError naming the file for an unreadable CSV, a missing ``required``
    column or a non-integer fold.
    """
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except OSError as error:
        raise DatasetError(f"{path}: cannot read manifest ({error.strerror or error})") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: not a readable CSV manifest ({error})") from None
    try:
        _require(frame, required)
    except DatasetError as error:
        raise DatasetError(f"{path}: {error}") from None
    base = path.parent.absolute()
    frame["path"] = [p if os.path.isabs(p) else os.path.join(base, p) for p in frame["path"]]
    if "fold" in frame.columns:
        folds = pd.to_numeric(frame["fold"], errors="coerce")
        if (bad := folds.isna() | (folds % 1 != 0)).any():
            line = int(np.flatnonzero(bad)[0]) + 2  # 1-based, after the header
            raise DatasetError(f"{path}: line {line}: fold {frame['fold'].iloc[line - 2]!r} is not an integer")
        frame["fold"] = folds.astype(np.int64)
    return frame
