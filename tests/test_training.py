"""Training runs on a slice of the real pneumonia set: run folder, determinism, resume, two-stage fine-tuning."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from lungscope.cli import main
from lungscope.data.datasets import scan_dataset
from lungscope.data.labels import classes_for
from lungscope.errors import ConfigError, DatasetError
from lungscope.models import create_model, get_spec
from lungscope.models.weights import check_pretrained_input
from lungscope.training import TrainConfig, resume_config, train
from lungscope.training import trainer as trainer_module

REPO = Path(__file__).resolve().parents[1]
QUICK = {"model": "shallow-cnn", "limit": 240, "epochs": 2, "batch_size": 16, "seed": 3}


def _config(chest_xray: Path, out: Path, **options) -> TrainConfig:
    return TrainConfig.from_dict({"data": str(chest_xray / "train"), "out": str(out), **QUICK, **options})


def _metrics(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "metrics.csv").drop(columns="seconds")


def test_run_folder(chest_xray: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    summary = train(_config(chest_xray, run), progress=False)
    assert {p.name for p in run.iterdir()} >= {
        "config.yaml", "split.csv", "metrics.csv", "curves.png", "best.pt", "last.pt", "summary.json"
    }
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics.columns) == ["epoch", "train_loss", "train_accuracy", "train_auc", "val_loss", "val_accuracy",
                                     "val_auc", "lr", "seconds"]
    assert metrics["epoch"].tolist() == [1, 2]
    assert metrics["val_auc"].between(0, 1).all()
    split = pd.read_csv(run / "split.csv")
    sides = split.groupby("patient_id")["split"].nunique()
    assert (sides == 1).all(), "a patient on two sides of the split"
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["classes"] == ["NORMAL", "PNEUMONIA"] and best["config"]["model"] == "shallow-cnn"
    assert best["preprocessing"] == {"image_size": 64, "resize": "squash", "clahe": False, "roi": "none",
                                     "roi_margin": 0.05, "normalise": "fixed"}  # shallow-cnn's size, the defaults
    model = create_model("shallow-cnn")
    model.load_state_dict(best["model"])
    assert json.loads((run / "summary.json").read_text())["best_epoch"] == summary["best_epoch"]
    assert yaml.safe_load((run / "config.yaml").read_text())["limit"] == 240


def test_same_seed_same_metrics(chest_xray: Path, tmp_path: Path) -> None:
    train(_config(chest_xray, tmp_path / "a"), progress=False)
    train(_config(chest_xray, tmp_path / "b"), progress=False)
    pd.testing.assert_frame_equal(_metrics(tmp_path / "a"), _metrics(tmp_path / "b"))
    train(_config(chest_xray, tmp_path / "c", seed=4), progress=False)
    assert not _metrics(tmp_path / "a").equals(_metrics(tmp_path / "c"))


def test_resume_after_interrupt_matches_uninterrupted(
    chest_xray: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = {"epochs": 3, "scheduler": "plateau", "plateau_patience": 0}
    train(_config(chest_xray, tmp_path / "straight", **options), progress=False)

    calls = {"n": 0}
    real_epoch = trainer_module.train_one_epoch

    def interrupted_third_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_one_epoch", interrupted_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(_config(chest_xray, tmp_path / "resumed", **options), progress=False)
    assert len(pd.read_csv(tmp_path / "resumed" / "metrics.csv")) == 2
    monkeypatch.setattr(trainer_module, "train_one_epoch", real_epoch)
    train(resume_config(tmp_path / "resumed"), resume=True, progress=False)
    pd.testing.assert_frame_equal(_metrics(tmp_path / "straight"), _metrics(tmp_path / "resumed"))


def test_two_stage_trains_only_the_head_first(chest_xray: Path, tmp_path: Path) -> None:
    weights = tmp_path / "resnet18.pt"
    source = create_model("resnet18", num_classes=1000, in_channels=3)
    torch.save(source.state_dict(), weights)
    run = tmp_path / "run"
    train(
        _config(chest_xray, run, model="resnet18", image_size=64, pretrained=str(weights), freeze_epochs=1, epochs=2,
                limit=120, scheduler="none"),
        progress=False,
    )
    lrs = pd.read_csv(run / "metrics.csv")["lr"].tolist()
    assert lrs == pytest.approx([1e-3, 1e-4])  # stage two at a tenth of the learning rate
    # After stage one alone the backbone is exactly the loaded weights (3-channel kernels summed), the head is new.
    head_only = tmp_path / "head"
    train(
        _config(chest_xray, head_only, model="resnet18", image_size=64, pretrained=str(weights), freeze_epochs=1,
                epochs=1, limit=120, scheduler="none"),
        progress=False,
    )
    state = torch.load(head_only / "last.pt", weights_only=True)["model"]
    torch.testing.assert_close(state["conv1.weight"], source.conv1.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(state["layer4.1.conv2.weight"], source.layer4[1].conv2.weight)
    assert state["fc.weight"].shape == (2, 512)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path: Path) -> None:
    """Each config builds its network, which takes the config's input side (the network's own unless it fine-tunes
    lungscope-cxr at a larger one) and gives one logit per class of its labels."""
    config = TrainConfig.from_yaml(path, out="run")
    spec = get_spec(config.model)
    side = config.image_size or spec.input_size
    check_pretrained_input(config.pretrained, model_name=config.model, image_size=side, normalise=config.normalise)
    assert side == spec.input_size or config.pretrained == "lungscope-cxr"
    classes = len(classes_for(config.labels))
    with torch.device("meta"):
        model = create_model(config.model, num_classes=classes, **config.model_options)
        assert model(torch.empty(2, 1, side, side)).shape == (2, classes)


def test_cli_train_and_refusal_to_overwrite(
    chest_xray: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    argv = ["train", "--config", str(REPO / "configs" / "shallow-cnn-64.yaml"), "--data", str(chest_xray / "train"),
            "--limit", "200", "--epochs", "1", "--out", str(run)]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["epochs_run"] == 1
    assert yaml.safe_load((run / "config.yaml").read_text())["batch_size"] == 16  # from the config file
    assert main(argv) == 1  # never overwrite a run
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--resume", "--out", str(run), "--epochs", "2"]) == 0
    assert len(pd.read_csv(run / "metrics.csv")) == 2


def test_bad_config_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ConfigError, match="unknown config key"):
        TrainConfig.from_dict({"learning_rate": 0.1})
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        TrainConfig.from_yaml(bad)


@pytest.mark.parametrize(("content", "reason"), [
    (b"model: [unclosed\n", "not valid YAML: expected ',' or ']', but got '<stream end>' at line 2, column 1"),
    (b"\xff\xfe binary", "not valid YAML ('utf-8' codec can't decode byte 0xff in position 0: invalid start byte)"),
    (b"lr: \x00", "not valid YAML (unacceptable character #x0000: special characters are not allowed; "),
    (None, "config file not found"),
    ("folder", "cannot read the config file (Is a directory)"),
])
def test_a_config_file_that_cannot_be_read_is_one_line(content: bytes | str | None, reason: str,
                                                       tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    if content == "folder":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(ConfigError) as error:
        TrainConfig.from_yaml(path)
    assert str(error.value).startswith(f"{path}: {reason}") and "\n" not in str(error.value)


@pytest.mark.parametrize(("line", "message"), [
    ("lr: 0.001x", "config key 'lr' must be a number, not '0.001x'"),
    ("epochs: 2.5", "config key 'epochs' must be an integer, not 2.5"),
    ("epochs: true", "config key 'epochs' must be an integer, not True"),
    ("clahe: 'yes'", "config key 'clahe' must be true or false, not 'yes'"),
    ("image_size: big", "config key 'image_size' must be an integer or null, not 'big'"),
    ("model_options: [1]", "config key 'model_options' must be a mapping, not [1]"),
    ("manifest: 3", "config key 'manifest' must be a string or null, not 3"),
])
def test_config_value_of_the_wrong_type_names_its_key(line: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError) as error:
        TrainConfig.from_yaml(path, out="run")
    assert str(error.value) == message


def test_config_takes_an_integer_for_a_number(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("lr: 1\nimage_size: null\n")
    config = TrainConfig.from_yaml(path, out="run")
    assert (config.lr, config.image_size) == (1, None)


def test_cli_config_type_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("data: somewhere\nlr: 0.001x\n")
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 1
    assert capsys.readouterr().err == "lungscope train: error: config key 'lr' must be a number, not '0.001x'\n"
    assert not (tmp_path / "run").exists()


def test_interrupt_advises_resume_only_when_there_is_a_checkpoint(
    chest_xray: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = {"n": 0}
    real_epoch = trainer_module.train_one_epoch

    def interrupted_first_and_third_calls(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] in (1, 3):
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_one_epoch", interrupted_first_and_third_calls)
    first, second = tmp_path / "first", tmp_path / "second"
    with pytest.raises(KeyboardInterrupt):  # the first call: epoch 1 of the first run
        train(_config(chest_xray, first, limit=80, epochs=1), progress=False)
    out = capsys.readouterr().out
    assert "interrupted before the first epoch was complete: no checkpoint was saved" in out
    assert "--resume" not in out
    assert not (first / "last.pt").exists()
    with pytest.raises(KeyboardInterrupt):  # the third call: epoch 2 of the second run
        train(_config(chest_xray, second, limit=80, epochs=2), progress=False)
    assert f"interrupted after 1 complete epoch(s); continue with: lungscope train --resume --out {second}" in (
        capsys.readouterr().out)
    assert (second / "last.pt").is_file()


def test_resume_drops_a_metrics_row_written_after_last_pt(chest_xray: Path, tmp_path: Path) -> None:
    """A kill between an epoch's metrics row and its last.pt: the resumed run writes that epoch's row once."""
    run = tmp_path / "run"
    train(_config(chest_xray, run, limit=80, epochs=1), progress=False)
    with (run / "metrics.csv").open("a") as handle:
        handle.write("2,99,99,0.5,0.5,0.001,1\n3,99,")  # epoch 2's row, and a torn one: last.pt still holds epoch 1
    train(resume_config(run, epochs=2), resume=True, progress=False)
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2]
    assert metrics["train_loss"].iloc[1] != 99


def _extra(rows: list[tuple[str, str]], path: Path) -> str:
    pd.DataFrame(rows, columns=["path", "label"]).to_csv(path, index=False)
    return str(path)


def test_extra_train_images_join_the_training_split_only(chest_xray: Path, lung_masks: Path, tmp_path: Path) -> None:
    adults = [str(p) for p in sorted((lung_masks / "images").glob("*_0.png"))[:5]]
    config = TrainConfig(data=str(chest_xray / "train"), limit=60, seed=0,
                         extra_train=_extra([(p, "NORMAL") for p in adults], tmp_path / "adults.csv"))
    plain = trainer_module.make_split(dataclasses.replace(config, extra_train=None))
    split = trainer_module.make_split(config)
    added = split[split["path"].isin(adults)]
    assert len(split) == len(plain) + 5 and len(added) == 5
    assert set(added["split"]) == {"train"} and set(added["label"]) == {"NORMAL"}
    pd.testing.assert_frame_equal(split[~split["path"].isin(adults)].reset_index(drop=True), plain)
    again = trainer_module.with_extra_train(split, config.extra_train, "binary")  # already there: not twice
    assert len(again) == len(split)


def test_extra_train_refuses_an_image_the_run_validates_or_tests_on(chest_xray: Path, tmp_path: Path) -> None:
    plain = trainer_module.make_split(TrainConfig(data=str(chest_xray / "train"), limit=60, seed=0))
    held = plain[plain["split"] == "val"].iloc[0]
    with pytest.raises(DatasetError, match="validated or tested on"):
        trainer_module.with_extra_train(plain, _extra([(held["path"], held["label"])], tmp_path / "x.csv"), "binary")


def test_the_shipped_adult_normals_are_the_shared_normal_adults(lung_masks: Path) -> None:
    frame = scan_dataset(REPO / "configs" / "adult-normals.csv", labels="binary")
    assert len(frame) == 287 == frame["patient_id"].nunique() == len(list((lung_masks / "images").glob("*_0.png")))
    assert set(frame["label"]) == {"NORMAL"} and all(Path(p).stem.endswith("_0") for p in frame["path"])
