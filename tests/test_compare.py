"""`lungscope compare`: runs side by side, from their validation record or evaluated on the same data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from lungscope.cli import main
from lungscope.errors import ConfigError
from lungscope.evaluation.compare import VALIDATION_SOURCE, compare_runs, format_comparison
from lungscope.evaluation.metrics import METRIC_NAMES
from lungscope.training import TrainConfig, train

# PReLU learns one slope per channel: two per block (16+32+64+128+256 channels) and one per head unit (128).
PRELU_SLOPES = 2 * (16 + 32 + 64 + 128 + 256) + 128


@pytest.fixture(scope="module")
def runs(chest_xray: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny five-block-cnn runs on the same split, differing only in the activation."""
    root = tmp_path_factory.mktemp("compare")
    out = {}
    for activation in ("relu", "prelu"):
        out[activation] = root / activation
        config = TrainConfig(data=str(chest_xray / "train"), out=str(out[activation]), model="five-block-cnn",
                             image_size=32, limit=120, epochs=1, model_options={"activation": activation})
        train(config, progress=False)
    return out


def test_cli_compares_activations_and_writes_csv(runs: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "out" / "compare.csv"
    assert main(["compare", str(runs["relu"]), str(runs["prelu"]), "--csv", str(csv)]) == 0
    printed = capsys.readouterr().out
    assert "activation=relu" in printed and "activation=prelu" in printed and VALIDATION_SOURCE in printed
    table = pd.read_csv(csv)
    assert table["options"].tolist() == ["activation=relu", "activation=prelu"]
    assert table["parameters"][1] - table["parameters"][0] == PRELU_SLOPES
    assert (table["image_size"] == 32).all() and (table["model"] == "five-block-cnn").all()
    for row, run in zip(table.itertuples(), runs.values()):
        summary = json.loads((run / "summary.json").read_text())
        assert row.roc_auc == pytest.approx(summary["best_val_auc"], abs=1e-6)
        assert row.best_epoch == summary["best_epoch"] and math.isnan(row.roc_auc_ci_low)


def test_compare_on_data_gives_every_metric_with_an_interval(runs: dict[str, Path]) -> None:
    table = compare_runs(list(runs.values()), runs["relu"] / "split.csv", split="test", n_resamples=50)
    assert len(table) == 2 and table["source"].str.contains("bootstrap 95% CI").all()
    for row in table.to_dict("records"):
        calibration = json.loads((Path(row["run"]) / "calibration.json").read_text())
        assert row["threshold"] == pytest.approx(calibration["threshold"])  # uncalibrated probabilities, raw threshold
        for name in METRIC_NAMES:
            if not math.isnan(row[name]):
                assert row[f"{name}_ci_low"] <= row[name] + 1e-9 and row[name] <= row[f"{name}_ci_high"] + 1e-9
    text = format_comparison(table)
    roc = next(line for line in text.splitlines() if line.startswith("roc auc"))
    assert roc.count("(") == 2  # a value and its interval for each run


def test_format_marks_missing_values_and_disambiguates_names() -> None:
    table = pd.DataFrame([
        {"run": "a/run", "model": "m", "options": "-", "parameters": 1234, "image_size": 64, "epochs_run": 2,
         "best_epoch": 1, "threshold": None, "source": "s", "roc_auc": 0.91234, "roc_auc_ci_low": 0.8,
         "roc_auc_ci_high": 0.95, "accuracy": math.nan, "accuracy_ci_low": math.nan, "accuracy_ci_high": math.nan},
        {"run": "b/run", "model": "m", "options": "-", "parameters": 1234, "image_size": 64, "epochs_run": 2,
         "best_epoch": 2, "threshold": 0.25, "source": "s", "roc_auc": 0.5, "roc_auc_ci_low": math.nan,
         "roc_auc_ci_high": math.nan, "accuracy": 0.75, "accuracy_ci_low": math.nan, "accuracy_ci_high": math.nan},
    ])
    lines = format_comparison(table).splitlines()
    assert lines[0].split() == ["a/run", "b/run"]
    rows = {line[:12].strip(): line[12:].split() for line in lines[1:]}
    assert rows["parameters"] == ["1,234", "1,234"]
    assert rows["roc auc"] == ["0.912", "(0.800-0.950)", "0.500"]
    assert rows["accuracy"] == ["-", "0.750"] and rows["threshold"] == ["-", "0.250"]


def test_not_a_run_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="not a finished run folder"):
        compare_runs([tmp_path])
    with pytest.raises(ConfigError, match="--data"):
        compare_runs([tmp_path], split="test")
    assert main(["compare", str(tmp_path)]) == 1
    assert "not a finished run folder" in capsys.readouterr().err
