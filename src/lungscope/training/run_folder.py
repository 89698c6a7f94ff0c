"""The run folder every trainer writes (the classifier, the head on features, the lung segmenter).

``config.yaml`` (the resolved config), ``metrics.csv`` (a row per epoch: ``epoch``, ``train_*``, ``val_*`` and the
trainer's other columns), ``best.pt`` and ``last.pt`` (through :func:`~lungscope.checkpoint.save_checkpoint`) and
``summary.json``; a trainer adds its own files (``split.csv``, ``curves.png``...) under :attr:`RunFolder.path`.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from lungscope.checkpoint import BEST, LAST, load_checkpoint, save_checkpoint
from lungscope.errors import ConfigError


class RunFolder:
    """A new run's folder, or (``resume``) the one holding a ``last.pt`` to continue. A folder that already holds a
    run (a ``best.pt`` or ``last.pt``) is refused, unless resuming; ``resumable`` trainers say how to continue it."""

    def __init__(self, out: str | os.PathLike[str] | None, *, resume: bool = False, resumable: bool = False) -> None:
        if not out:
            raise ConfigError("an output folder (--out RUN_DIR) is required")
        self.path = Path(out)
        self.resume = resume
        self.columns: list[str] = []
        if resume:
            if not (self.path / LAST).is_file():
                raise ConfigError(f"{self.path}: nothing to resume (no {LAST})")
        elif held := [name for name in (BEST, LAST) if (self.path / name).exists()]:
            advice = "pass --resume to continue it or choose another --out" if resumable else "choose another --out"
            raise ConfigError(f"{self.path} already holds a run ({held[0]}); {advice}")

    def create(self, config: Mapping[str, Any]) -> None:
        """Make the folder and write ``config.yaml``."""
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "config.yaml").write_text(yaml.safe_dump(dict(config), sort_keys=False))

    def open_metrics(self, columns: Sequence[str], epochs_done: int = 0) -> None:
        """Start ``metrics.csv`` with ``columns``; resuming, keep the rows of the ``epochs_done`` epochs ``last.pt``
        holds (a kill after an epoch's row but before its ``last.pt`` leaves a row, perhaps torn, written again)."""
        self.columns = list(columns)
        path = self.path / "metrics.csv"
        if not self.resume:
            path.write_text(",".join(self.columns) + "\n")
            return
        header, *rows = path.read_text().splitlines(keepends=True)
        kept = [row for row in rows if row.endswith("\n") and int(row.split(",", 1)[0]) <= epochs_done]
        if kept != rows:
            tmp = path.with_suffix(".csv.tmp")
            tmp.write_text(header + "".join(kept))
            tmp.replace(path)

    def record(self, row: Mapping[str, float]) -> None:
        """Append an epoch's row to ``metrics.csv`` (floats to 6 significant digits)."""
        with (self.path / "metrics.csv").open("a", newline="") as handle:
            csv.DictWriter(handle, self.columns).writerow({k: _fmt(v) for k, v in row.items()})

    def save_best(self, state: dict[str, Any]) -> None:
        save_checkpoint(state, self.path / BEST)

    def save_last(self, state: dict[str, Any]) -> None:
        save_checkpoint(state, self.path / LAST)

    def load_last(self) -> dict[str, Any]:
        return load_checkpoint(self.path / LAST, kind="training state")

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        (self.path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def _fmt(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.6g}"
