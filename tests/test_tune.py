"""Hyper-parameter search on a slice of the real pneumonia set: trial folders, the study, resuming, the best config."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

import lungscope.training.tune as tune_module
from lungscope.cli import main
from lungscope.errors import ConfigError, DatasetError, LungscopeError
from lungscope.training import TrainConfig
from lungscope.training.tune import DEFAULT_SPACE, load_space, parse_space, tune

REPO = Path(__file__).resolve().parents[1]
SHALLOW = REPO / "configs" / "shallow-cnn-64.yaml"
LIMIT, TRIALS = 150, 2


def _config(chest_xray: Path, out: Path) -> TrainConfig:
    return TrainConfig(data=str(chest_xray / "train"), out=str(out), model="shallow-cnn", limit=LIMIT, epochs=1)


def _study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name=out.name, storage=f"sqlite:///{out / 'study.db'}")


def _as_config_values(row: pd.Series) -> dict:
    """A trials.csv row's parameters as config values (``weight_decay=0`` true means weight_decay 0)."""
    values = {"lr": row["params_lr"], "batch_size": row["params_batch_size"], "optimizer": row["params_optimizer"]}
    values["weight_decay"] = 0.0 if row["params_weight_decay=0"] else row.get("params_weight_decay")
    return values


@pytest.fixture(scope="module")
def search(chest_xray: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A real random search of two trials over the default space."""
    out = tmp_path_factory.mktemp("tune") / "search"
    return out, tune(_config(chest_xray, out), TRIALS, sampler="random", progress=False)


def test_trial_folders_share_one_split_and_trials_csv(search: tuple[Path, dict]) -> None:
    out, summary = search
    assert sorted(p.name for p in out.glob("trial_*")) == ["trial_000", "trial_001"]
    split = pd.read_csv(out / "split.csv")
    assert (split.groupby("patient_id")["split"].nunique() == 1).all(), "a patient on two sides of the split"
    assert len(split) < LIMIT * 1.3
    trials = pd.read_csv(out / "trials.csv")
    assert trials["number"].tolist() == [0, 1] and set(trials["state"]) == {"COMPLETE"}
    for _, row in trials.iterrows():
        run = out / f"trial_{row['number']:03d}"
        pd.testing.assert_frame_equal(pd.read_csv(run / "split.csv"), split)
        assert row["value"] == pytest.approx(json.loads((run / "summary.json").read_text())["best_val_auc"])
        trained = yaml.safe_load((run / "config.yaml").read_text())
        assert {k: trained[k] for k in DEFAULT_SPACE} == pytest.approx(_as_config_values(row))
    assert summary["trials"] == summary["completed"] == TRIALS


def test_best_config_is_the_best_trial(search: tuple[Path, dict]) -> None:
    out, summary = search
    trials = pd.read_csv(out / "trials.csv")
    best = trials.loc[trials["value"].idxmax()]
    assert summary["best_trial"] == best["number"] and summary["best_value"] == pytest.approx(best["value"])
    config = TrainConfig.from_yaml(out / "best_config.yaml", out="final")
    assert {k: getattr(config, k) for k in DEFAULT_SPACE} == pytest.approx(_as_config_values(best))
    assert (config.model, config.limit, config.epochs, config.manifest) == ("shallow-cnn", LIMIT, 1, None)


def test_rerun_resumes_the_study(
    chest_xray: Path, search: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = search[0]
    real_train = tune_module.train

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished study trained again")

    monkeypatch.setattr(tune_module, "train", must_not_train)
    assert tune(_config(chest_xray, out), TRIALS, sampler="random", progress=False)["trials"] == TRIALS
    assert len(_study(out).trials) == TRIALS

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tune_module, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tune(_config(chest_xray, out), TRIALS + 1, sampler="random", progress=False)
    stopped = _study(out).trials[TRIALS]
    assert stopped.state == optuna.trial.TrialState.FAIL and stopped.user_attrs["interrupted"]

    monkeypatch.setattr(tune_module, "train", real_train)
    summary = tune(_config(chest_xray, out), TRIALS + 1, sampler="random", progress=False)
    study = _study(out)
    assert summary["trials"] == TRIALS + 1 and len(study.trials) == TRIALS + 2  # the interrupted one not counted
    assert study.trials[-1].state == optuna.trial.TrialState.COMPLETE
    assert study.trials[-1].params == stopped.params, "the interrupted trial's parameters were not tried again"
    assert (out / f"trial_{study.trials[-1].number:03d}" / "summary.json").is_file()
    with pytest.raises(ConfigError, match="epochs 1 -> 2"):
        tune(TrainConfig.from_dict({**_config(chest_xray, out).to_dict(), "epochs": 2}), 5, progress=False)


def test_failed_trial_is_recorded_and_the_search_goes_on(
    chest_xray: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    levels = []

    def fake_train(config: TrainConfig, *, progress: bool | None = None) -> dict:
        levels.append(optuna.logging.get_verbosity())
        if config.batch_size == 32:
            raise DatasetError("no readable image in the train split")
        return {"best_val_auc": config.lr * 10}

    monkeypatch.setattr(tune_module, "train", fake_train)
    space = {"batch_size": [16, 32], "lr": ["1e-3", 0.01]}  # YAML reads 1e-3 as text; it is parsed
    before = optuna.logging.get_verbosity()
    summary = tune(_config(chest_xray, tmp_path / "grid"), 10, sampler="grid", space=space, progress=False)
    assert (summary["trials"], summary["completed"], summary["failed"]) == (4, 2, 2)  # the grid has 4 points
    assert set(levels) == {optuna.logging.WARNING} and optuna.logging.get_verbosity() == before  # quiet, restored
    assert summary["best_params"] == {"batch_size": 16, "lr": 0.01}
    trials = pd.read_csv(tmp_path / "grid" / "trials.csv")
    failed = trials[trials["state"] == "FAIL"]
    assert set(failed["params_batch_size"]) == {32}
    assert failed["error"].str.contains("no readable image").all()
    monkeypatch.setattr(tune_module, "train", lambda config, progress=None: {"best_val_auc": float("nan")})
    with pytest.raises(LungscopeError, match="none of the 1 trial"):
        tune(_config(chest_xray, tmp_path / "nan"), 1, space={"batch_size": [16]}, progress=False)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"learning_rate": [0.1]}, "not a training option"),
        ({"limit": [100, 200]}, "cannot be searched"),
        ({"lr": {"low": 1e-2, "high": 1e-4}}, "must be below"),
        ({"lr": {"low": 0, "high": 1e-2, "log": True}}, "log range"),
        ({"lr": {"low": 1e-4}}, "needs high"),
        ({"lr": {"low": 1e-4, "high": 1e-2, "step": 2}}, "not step"),
        ({"optimizer": {"low": 1, "high": 2}}, "numeric option"),
        ({"optimizer": ["adam", "rmsprop"]}, "optimizer must be one of"),
        ({"batch_size": [16, 0.5]}, "not an integer"),
        ({"lr": ["fast"]}, "not a number"),
        ({"batch_size": []}, "non-empty list"),
        ({"batch_size": 16}, "non-empty list"),
        ({"model_options": [{"width": 2}]}, "plain values"),
        ([], "mapping"),
    ],
)
def test_bad_space_is_a_config_error(space: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_space(space)  # type: ignore[arg-type]


def test_space_files_and_sampler_checks(chest_xray: Path, tmp_path: Path) -> None:
    good = tmp_path / "space.yaml"
    good.write_text("lr: {low: 1e-4, high: 1e-2, log: true}\nbatch_size: [16, 32]\n")
    params = {p.name: p for p in parse_space(load_space(good))}
    assert (params["lr"].low, params["lr"].high, params["lr"].log) == (1e-4, 1e-2, True)
    assert params["batch_size"].choices == (16, 32)
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: {low: 1e-2, high: 1e-4}\n")
    with pytest.raises(ConfigError, match="bad.yaml: lr"):
        load_space(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_space(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="ranges given: lr"):
        tune(_config(chest_xray, tmp_path / "g"), 2, sampler="grid", space=load_space(good))
    with pytest.raises(ConfigError, match="sampler must be"):
        tune(_config(chest_xray, tmp_path / "s"), 2, sampler="bayes")
    with pytest.raises(ConfigError, match="positive integer"):
        tune(_config(chest_xray, tmp_path / "n"), 0)


def test_cli_tune(chest_xray: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", "--help"])
    assert exit_info.value.code == 0
    assert "--trials" in capsys.readouterr().out
    space = tmp_path / "space.yaml"
    space.write_text("batch_size: [16, 32]\n")
    out = tmp_path / "tune"
    argv = ["tune", "--config", str(SHALLOW), "--data", str(chest_xray / "train"), "--limit", "120", "--epochs", "1",
            "--sampler", "grid", "--space", str(space), "--trials", "3", "--out", str(out)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    summary = json.loads(printed.getvalue())
    assert summary["trials"] == 2  # the grid has two points
    assert sorted(pd.read_csv(out / "trials.csv")["params_batch_size"]) == [16, 32]
    best = TrainConfig.from_yaml(out / "best_config.yaml")
    assert best.batch_size == summary["best_params"]["batch_size"] and best.early_stopping == 3  # from --config
    assert main(["tune", "--data", str(chest_xray / "train"), "--space", str(tmp_path / "no.yaml"),
                 "--out", str(tmp_path / "x")]) == 1
    assert "no.yaml" in capsys.readouterr().err
