"""The epoch loop and the run folder the three trainers share (the classifier, the head, the lung segmenter)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lungscope.errors import ConfigError
from lungscope.training.engine import Progress, improved, run_epochs
from lungscope.training.head import HeadConfig, train_head
from lungscope.training.run_folder import RunFolder
from lungscope.training.segmenter import train_segmenter


def _loop(values: list[float], progress: Progress, epochs: int, *, minimise: bool,
          patience: int = 0) -> tuple[bool, list[tuple]]:
    """Run the loop on made-up validation values; what it recorded: (epoch, value, improved)."""
    recorded: list[tuple] = []
    stopped = run_epochs(progress, epochs, train=lambda: {"train_loss": 1.0},
                         validate=lambda: {"val_loss": values[progress.epoch]},
                         record=lambda row, better: recorded.append((row["epoch"], row["val_loss"], better)),
                         monitor="val_loss", minimise=minimise, patience=patience)
    return stopped, recorded


def test_the_loop_keeps_the_best_and_stops_after_patience_epochs_without_it() -> None:
    progress = Progress()
    stopped, recorded = _loop([3.0, 2.0, 2.5, 2.0, 2.2, 1.0], progress, 6, minimise=True, patience=3)
    assert stopped and recorded == [(1, 3.0, True), (2, 2.0, True), (3, 2.5, False), (4, 2.0, False),
                                    (5, 2.2, False)]
    assert (progress.epoch, progress.best, progress.best_epoch, progress.bad_epochs) == (5, 2.0, 2, 3)


def test_the_loop_continues_where_progress_stands_and_maximises() -> None:
    progress = Progress(epoch=2, best=0.5, best_epoch=1, bad_epochs=1)
    stopped, recorded = _loop([0.0, 0.0, 0.4, 0.7], progress, 4, minimise=False)
    assert not stopped and recorded == [(3, 0.4, False), (4, 0.7, True)]
    assert (progress.best, progress.best_epoch, progress.bad_epochs) == (0.7, 4, 0)


def test_a_first_value_is_always_the_best_and_nan_never() -> None:
    assert improved(math.nan, math.nan, minimise=True) and improved(5.0, math.nan, minimise=False)
    assert not improved(math.nan, 1.0, minimise=True) and not improved(1.0, 1.0, minimise=True)


def test_the_folder_writes_config_and_rows_and_refuses_a_run_in_one_line(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "run")
    folder.create({"lr": 0.001, "hidden": [8]})
    folder.open_metrics(["epoch", "train_loss", "val_loss", "seconds"])
    folder.record({"epoch": 1, "train_loss": 0.123456789, "val_loss": 1, "seconds": 2.5})
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text()) == {"lr": 0.001, "hidden": [8]}
    assert pd.read_csv(tmp_path / "run" / "metrics.csv").to_dict("records") == [
        {"epoch": 1, "train_loss": 0.123457, "val_loss": 1.0, "seconds": 2.5}]
    assert RunFolder(tmp_path / "run").path == tmp_path / "run"  # config and metrics alone: not yet a run
    (tmp_path / "run" / "best.pt").touch()
    with pytest.raises(ConfigError, match=r"^\S+/run already holds a run \(best\.pt\); choose another --out$"):
        RunFolder(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"holds a run \(best\.pt\); pass --resume to continue it or choose"):
        RunFolder(tmp_path / "run", resumable=True)
    with pytest.raises(ConfigError, match=r"run: nothing to resume \(no last\.pt\)$"):
        RunFolder(tmp_path / "run", resume=True)
    with pytest.raises(ConfigError, match=r"^an output folder \(--out RUN_DIR\) is required$"):
        RunFolder("")


def test_every_trainer_refuses_a_folder_holding_a_run(tmp_path: Path) -> None:
    """Before reading any data: the head and the segmenter refuse as the classifier trainer does."""
    (tmp_path / "last.pt").touch()
    with pytest.raises(ConfigError, match="already holds a run"):
        train_segmenter(tmp_path / "no-images", tmp_path / "no-masks", tmp_path, progress=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        train_head(HeadConfig(features=str(tmp_path / "none.parquet"), out=str(tmp_path)), progress=False)
