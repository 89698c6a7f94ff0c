"""Cross-validation on a slice of the real pneumonia set: folds by patient, the summary, the pooled out-of-fold AUC,
resuming, the CLI; cross-site validation on a slice of the real tuberculosis sets."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from lungscope.cli import main
from lungscope.data.datasets import scan_dataset
from lungscope.data.splits import subsample_by_patient
from lungscope.errors import ConfigError, DatasetError
from lungscope.evaluation.bootstrap import patient_bootstrap
from lungscope.training import TrainConfig, cross_validate
from lungscope.training import cv as cv_module

REPO = Path(__file__).resolve().parents[1]
SHALLOW = REPO / "configs" / "shallow-cnn-64.yaml"
FOLDS, LIMIT = 3, 150


def _config(chest_xray: Path, out: Path, **options) -> TrainConfig:
    """The config the CLI run below builds: the shipped shallow-CNN file with the same flags."""
    values = {"data": str(chest_xray / "train"), "out": str(out), "limit": LIMIT, "epochs": 1, **options}
    return TrainConfig.from_yaml(SHALLOW, **values)


@pytest.fixture(scope="module")
def cv_run(chest_xray: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One real 3-fold CV through the CLI; returns its folder and the summary it printed."""
    out = tmp_path_factory.mktemp("cv") / "cv"
    argv = ["cv", "--config", str(SHALLOW), "--data", str(chest_xray / "train"), "--limit", str(LIMIT),
            "--epochs", "1", "--folds", str(FOLDS), "--out", str(out)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    return out, json.loads(printed.getvalue())


def test_folds_disjoint_by_patient_and_cover_every_image_once(chest_xray: Path, cv_run: tuple[Path, dict]) -> None:
    out, _ = cv_run
    folds = pd.read_csv(out / "folds.csv")
    expected = subsample_by_patient(scan_dataset(chest_xray / "train"), LIMIT, seed=0)
    assert sorted(folds["path"]) == sorted(expected["path"]) and folds["path"].is_unique
    assert sorted(folds["fold"].unique()) == list(range(FOLDS))
    assert (folds.groupby("patient_id")["fold"].nunique() == 1).all(), "a patient in two folds"
    for fold in range(FOLDS):
        split = pd.read_csv(out / f"fold_{fold}" / "split.csv")
        assert sorted(split["path"]) == sorted(folds["path"])
        val = set(split.loc[split["split"] == "val", "path"])
        assert val == set(folds.loc[folds["fold"] == fold, "path"])
        assert set(split["split"]) == {"train", "val"}
        train_patients = set(split.loc[split["split"] == "train", "patient_id"])
        assert not train_patients & set(split.loc[split["split"] == "val", "patient_id"])
        assert json.loads((out / f"fold_{fold}" / "summary.json").read_text())["n_val"] == len(val)


def test_summary_is_the_mean_and_std_of_the_folds(cv_run: tuple[Path, dict]) -> None:
    out, printed = cv_run
    summary = json.loads((out / "cv_summary.json").read_text())
    assert printed == summary
    by_fold = []
    for fold in range(FOLDS):
        best_epoch = json.loads((out / f"fold_{fold}" / "summary.json").read_text())["best_epoch"]
        metrics = pd.read_csv(out / f"fold_{fold}" / "metrics.csv").set_index("epoch")
        by_fold.append(metrics.loc[best_epoch, ["val_auc", "val_accuracy", "val_loss"]].to_numpy(float))
    by_fold = np.array(by_fold)
    for i, metric in enumerate(["val_auc", "val_accuracy", "val_loss"]):
        assert [row[metric] for row in summary["per_fold"]] == pytest.approx(by_fold[:, i])
        assert summary["mean"][metric] == pytest.approx(by_fold[:, i].mean())
        assert summary["std"][metric] == pytest.approx(by_fold[:, i].std(ddof=1))
    table = pd.read_csv(out / "cv_summary.csv").set_index("fold")
    assert list(table.index) == ["0", "1", "2", "mean", "std", "pooled"]
    assert table.loc["std", "val_auc"] == pytest.approx(summary["std"]["val_auc"])
    assert summary["n_images"] == len(pd.read_csv(out / "folds.csv"))
    pooled = summary["pooled_val_auc"]
    assert table.loc["pooled", ["val_auc", "val_auc_low", "val_auc_high"]].tolist() == pytest.approx(
        [pooled["auc"], *pooled["ci95"]])


def test_pooled_auc_scores_each_image_by_the_best_model_of_its_fold(cv_run: tuple[Path, dict]) -> None:
    out, summary = cv_run
    folds = pd.read_csv(out / "folds.csv")
    scored = pd.read_csv(out / "oof_predictions.csv")
    assert list(scored.columns) == ["path", "label", "patient_id", "split", "fold", "p_NORMAL", "p_PNEUMONIA"]
    pd.testing.assert_frame_equal(scored[folds.columns].sort_values("path", ignore_index=True),
                                  folds.sort_values("path", ignore_index=True))
    assert scored[["p_NORMAL", "p_PNEUMONIA"]].sum(axis=1).to_numpy() == pytest.approx(1.0, abs=1e-6)
    targets = (scored["label"] == "PNEUMONIA").to_numpy()
    for row in summary["per_fold"]:  # each fold's predictions are the ones its best epoch validated with
        held = (scored["fold"] == row["fold"]).to_numpy()
        assert roc_auc_score(targets[held], scored.loc[held, "p_PNEUMONIA"]) == pytest.approx(row["val_auc"], abs=1e-6)
    pooled = summary["pooled_val_auc"]
    expected = patient_bootstrap(lambda y, p: roc_auc_score(y, p[:, 1]), targets.astype(int),
                                 scored[["p_NORMAL", "p_PNEUMONIA"]].to_numpy(), scored["patient_id"].to_numpy())
    assert [pooled["auc"], *pooled["ci95"]] == pytest.approx(list(expected))
    assert pooled["ci95"][0] < pooled["auc"] < pooled["ci95"][1]
    assert (pooled["n_images"], pooled["n_patients"]) == (len(folds), folds["patient_id"].nunique())


def test_rerun_skips_finished_folds_and_resumes_an_interrupted_one(
    chest_xray: Path, cv_run: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "cv"
    shutil.copytree(cv_run[0], out)
    (out / "fold_1" / "summary.json").unlink()  # as if stopped after fold 1's last epoch, before its summary
    calls = []
    real_train = cv_module.train

    def recording_train(config: TrainConfig, *, resume: bool = False, progress: bool | None = None) -> dict:
        calls.append((Path(config.out).name, resume))
        return real_train(config, resume=resume, progress=progress)

    monkeypatch.setattr(cv_module, "train", recording_train)
    summary = cross_validate(_config(chest_xray, out), FOLDS, progress=False)
    assert calls == [("fold_1", True)]
    assert summary["per_fold"] == cv_run[1]["per_fold"]
    cross_validate(_config(chest_xray, out), FOLDS, progress=False)
    assert calls == [("fold_1", True)], "a finished CV trained again"


def test_rerun_with_other_options_or_data_is_refused(chest_xray: Path, cv_run: tuple[Path, dict]) -> None:
    out = cv_run[0]
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ConfigError, match=r"lr 0\.001 -> 0\.01"):
        cross_validate(_config(chest_xray, out, lr=0.01), FOLDS, progress=False)
    with pytest.raises(ConfigError, match="folds.csv"):
        cross_validate(_config(chest_xray, out, limit=LIMIT + 40), FOLDS, progress=False)
    with pytest.raises(ConfigError, match="folds.csv"):
        cross_validate(_config(chest_xray, out), FOLDS - 1, progress=False)
    assert sorted(p.name for p in out.iterdir()) == before


def test_bad_requests(chest_xray: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="k must be"):
        cross_validate(_config(chest_xray, tmp_path / "a"), 1)
    with pytest.raises(DatasetError, match="cannot make 500 folds"):
        cross_validate(_config(chest_xray, tmp_path / "b"), 500)
    with pytest.raises(ConfigError, match="manifest"):
        cross_validate(_config(chest_xray, tmp_path / "c", manifest=str(tmp_path / "split.csv")), 3)
    with pytest.raises(ConfigError, match="extra_train"):
        cross_validate(_config(chest_xray, tmp_path / "e", extra_train="configs/adult-normals.csv"), 3)
    with pytest.raises(ConfigError, match="--data"):
        cross_validate(TrainConfig(out=str(tmp_path / "d")), 3)
    with pytest.raises(ConfigError, match="--out"):
        cross_validate(TrainConfig(data=str(chest_xray / "train")), 3)


def test_cli_help_and_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["cv", "--help"])
    assert exit_info.value.code == 0
    assert "--folds" in capsys.readouterr().out
    assert main(["cv", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "cv")]) == 1
    assert "nowhere" in capsys.readouterr().err


# -- cross-site: train on one tuberculosis site, test on the other -----------------------------------------------------

PER_SITE = {"CHNCXR": 12, "MCUCXR": 8}  # images per site and label in the slice


@pytest.fixture(scope="module")
def sites_slice(lung_masks: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first images of each site and label of the real tuberculosis set: 24 Shenzhen, 16 Montgomery."""
    root = tmp_path_factory.mktemp("sites")
    for site, count in PER_SITE.items():
        for label in "01":
            for path in sorted((lung_masks / "images").glob(f"{site}_*_{label}.png"))[:count]:
                shutil.copy(path, root / path.name)
    return root


def test_site_of_reads_the_file_name_prefix() -> None:
    assert [cv_module.site_of(name) for name in ("CHNCXR_0001_0.png", "/x/mcucxr_0002_1.png",
                                                 "IM-0001-0001.jpeg", "CHNCXRX_0001_0.png")] == [
        "CHNCXR", "MCUCXR", None, None]


def test_cross_site_trains_on_one_site_and_tests_on_the_other(sites_slice: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cross"
    argv = ["cv", "--cross-site", "--config", str(SHALLOW), "--labels", "tb", "--data", str(sites_slice),
            "--epochs", "1", "--val-fraction", "0.25", "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == json.loads((out / "cross_site.json").read_text())
    assert [(r["train_site"], r["test_site"]) for r in summary["runs"]] == [("CHNCXR", "MCUCXR"), ("MCUCXR", "CHNCXR")]
    for result in summary["runs"]:
        home, away = result["train_site"], result["test_site"]
        run = out / f"{home}_to_{away}"
        split = pd.read_csv(run / "split.csv")
        sites = split["path"].map(cv_module.site_of)
        assert set(split.loc[sites == home, "split"]) == {"train", "val"}
        assert (sites[split["split"] == "test"] == away).all()
        assert (result["n_train"], result["n_val"]) == (
            (split["split"] == "train").sum(), (split["split"] == "val").sum())
        assert result["n_train"] + result["n_val"] == 2 * PER_SITE[home]
        scored = pd.read_csv(run / "test_predictions.csv")
        assert sorted(scored["path"]) == sorted(split.loc[split["split"] == "test", "path"])
        assert len(scored) == 2 * PER_SITE[away]
        targets = (scored["label"] == "TUBERCULOSIS").to_numpy()
        test = result["test_auc"]
        assert test["auc"] == pytest.approx(roc_auc_score(targets, scored["p_TUBERCULOSIS"]))
        assert test["ci95"][0] <= test["auc"] <= test["ci95"][1] and test["n_patients"] == 2 * PER_SITE[away]
        assert result["val_auc"] == pytest.approx(
            pd.read_csv(run / "metrics.csv").set_index("epoch").loc[result["best_epoch"], "val_auc"])
    assert main(argv) == 0, "a finished cross-site run is re-read, not trained again"
    assert json.loads(capsys.readouterr().out) == summary


def test_cross_site_needs_both_sites(chest_xray: Path, sites_slice: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    config = TrainConfig.from_yaml(SHALLOW, data=str(chest_xray / "train"), out=str(tmp_path / "a"), limit=40)
    with pytest.raises(DatasetError, match=r"needs images of both sites; found 0 CHNCXR_\*, 0 MCUCXR_\*$"):
        cv_module.cross_site(config, progress=False)
    shenzhen = tmp_path / "shenzhen"
    shenzhen.mkdir()
    for path in sorted(sites_slice.glob("CHNCXR_*")):
        shutil.copy(path, shenzhen / path.name)
    config = TrainConfig.from_yaml(SHALLOW, data=str(shenzhen), labels="tb", out=str(tmp_path / "b"))
    with pytest.raises(DatasetError, match=r"found 24 CHNCXR_\*, 0 MCUCXR_\*$"):
        cv_module.cross_site(config, progress=False)
    assert main(["cv", "--cross-site", "--folds", "3", "--data", str(shenzhen), "--out", str(tmp_path / "c")]) == 1
    assert capsys.readouterr().err.strip().endswith("--cross-site trains one run per site, not folds; drop --folds")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
