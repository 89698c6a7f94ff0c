"""Ensembles of cxr-resnets: the joined network answers and explains as the mean of its members; training one trains
each member from its own seed on one split (on a slice of the real pneumonia set), resumes, and cross-validates."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from captum.attr import LayerGradCam
from sklearn.metrics import roc_auc_score
from torch import nn

from lungscope.checkpoint import BEST
from lungscope.cli import main
from lungscope.errors import ConfigError
from lungscope.inference import Classifier
from lungscope.models import create_model, gradcam_layer
from lungscope.training import TrainConfig, train
from lungscope.training.ensemble import MEMBERS, member_configs

OPTIONS = {"members": 2, "width": 8}


def _members(count: int, seed: int = 0) -> list[nn.Module]:
    """Random cxr-resnets in eval mode with BatchNorm statistics of their own (not the identity of a new net)."""
    torch.manual_seed(seed)
    nets = [create_model("cxr-resnet", width=8).eval() for _ in range(count)]
    for net in nets:
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.data.uniform_(0.5, 1.5)
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return nets


def _joined(nets: list[nn.Module]) -> nn.Module:
    ensemble = create_model("cxr-resnet-ensemble", members=len(nets), width=8).eval()
    ensemble.load_members([net.state_dict() for net in nets])
    return ensemble


def test_joined_logits_are_the_members_mean() -> None:
    nets = _members(3)
    x = torch.randn(4, 1, 224, 224)
    with torch.no_grad():
        mean = torch.stack([net(x) for net in nets]).mean(dim=0)
        joined = _joined(nets)(x)
        single = nets[0](x)
    assert torch.allclose(joined, mean, atol=1e-5)
    assert (joined - single).abs().max() > 1e-2  # a different answer from the first member alone
    assert torch.allclose(joined.sum(dim=1), torch.zeros(4), atol=1e-5)  # centred, as each member's


def test_gradcam_of_the_joined_network_is_the_members_mean_map() -> None:
    """Grad-CAM (before its rectification) on the joined ``relu`` is the mean of the members' maps: the ensemble's
    map is the evidence for its averaged logit, not one member's."""
    nets = _members(3, seed=1)
    ensemble = _joined(nets)
    x = torch.randn(2, 1, 224, 224)
    name, layer = gradcam_layer(ensemble)
    assert name == "relu"
    joined = LayerGradCam(ensemble, layer).attribute(x, target=1, relu_attributions=False)
    maps = [LayerGradCam(net, gradcam_layer(net)[1]).attribute(x, target=1, relu_attributions=False) for net in nets]
    mean = torch.stack(maps).mean(dim=0)
    assert joined.shape == mean.shape == (2, 1, 7, 7)
    assert torch.allclose(joined, mean, atol=1e-5 * mean.abs().max().item())
    assert not torch.allclose(joined, maps[0], atol=0.1 * mean.abs().max().item())


@pytest.mark.parametrize(("options", "message"), [({"members": 1}, "members must be an integer >= 2"),
                                                  ({"members": True}, "members must be an integer >= 2"),
                                                  ({"width": 2}, "width must be an integer >= 4")])
def test_bad_options_are_one_line_config_errors(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_model("cxr-resnet-ensemble", **options)
    with pytest.raises(ConfigError, match=message):
        member_configs(TrainConfig(model="cxr-resnet-ensemble", model_options=options, out="x"))


def test_joined_network_takes_no_pretrained_weights() -> None:
    with pytest.raises(ConfigError, match="members start from pretrained weights"):
        create_model("cxr-resnet-ensemble", pretrained="lungscope-cxr")


def test_member_runs_share_the_split_and_differ_in_seed() -> None:
    config = TrainConfig(model="cxr-resnet-ensemble", model_options={"members": 3, "width": 8}, out="RUN", seed=5,
                         pretrained="lungscope-cxr", epochs=4)
    members = member_configs(config)
    assert [m.seed for m in members] == [5, 6, 7]
    assert [m.out for m in members] == [str(Path("RUN", MEMBERS, str(k))) for k in range(3)]
    assert [m.manifest for m in members] == [None, *[str(Path("RUN", MEMBERS, "0", "split.csv"))] * 2]
    assert {(m.model, m.pretrained, m.epochs) for m in members} == {("cxr-resnet", "lungscope-cxr", 4)}
    assert all(m.model_options == {"width": 8} for m in members)


@pytest.fixture(scope="module")
def ensemble_run(chest_xray: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real two-member ensemble: 80 shared images (patient-grouped), 64 px, one epoch each."""
    out = tmp_path_factory.mktemp("ensemble") / "run"
    config = TrainConfig(data=str(chest_xray / "train"), out=str(out), model="cxr-resnet-ensemble",
                         model_options=OPTIONS, image_size=64, limit=80, epochs=1, test_fraction=0.2, threads=1)
    train(config, progress=False)
    return out


def test_training_trains_each_member_on_one_split_then_joins_them(ensemble_run: Path) -> None:
    split = pd.read_csv(ensemble_run / "split.csv")
    for k in range(2):
        member = ensemble_run / MEMBERS / str(k)
        assert pd.read_csv(member / "split.csv").equals(split)
        assert TrainConfig.from_yaml(member / "config.yaml").seed == k
    first = torch.load(ensemble_run / MEMBERS / "0" / BEST, weights_only=True)["model"]["fc.weight"]
    second = torch.load(ensemble_run / MEMBERS / "1" / BEST, weights_only=True)["model"]["fc.weight"]
    assert not torch.equal(first, second)  # seeds differ, so do the members

    classifier = Classifier.load(ensemble_run)
    assert classifier.config["model"] == "cxr-resnet-ensemble" and classifier.threshold is not None
    members = [Classifier.load(ensemble_run / MEMBERS / str(k)) for k in range(2)]
    val = split[split["split"] == "val"]
    batch = torch.stack([classifier.transform(read) for read in _pixels(val["path"])])
    with torch.no_grad():
        mean_logits = torch.stack([m.model(batch) for m in members]).mean(dim=0)
    joined, _ = classifier.scores(batch, calibrated=False)
    assert np.allclose(joined, torch.softmax(mean_logits, dim=1).numpy(), atol=1e-5)

    summary = json.loads((ensemble_run / "summary.json").read_text())
    assert [m["seed"] for m in summary["members"]] == [0, 1] and summary["n_val"] == len(val)
    targets = (val["label"] == "PNEUMONIA").to_numpy()
    assert summary["val_auc"] == pytest.approx(roc_auc_score(targets, joined[:, 1]), abs=1e-9)


def _pixels(paths: pd.Series) -> list[np.ndarray]:
    from lungscope.data.io import read_image

    return [read_image(path).pixels for path in paths]


def test_evaluate_and_predict_take_the_ensemble_run(ensemble_run: Path, tmp_path: Path) -> None:
    split = pd.read_csv(ensemble_run / "split.csv")
    test = split[split["split"] == "test"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["evaluate", str(ensemble_run), "--data", str(ensemble_run / "split.csv"), "--split", "test",
                     "--resamples", "50", "--json", str(tmp_path / "eval.json")]) == 0
        assert main(["predict", *test["path"], "--model", str(ensemble_run), "--csv", str(tmp_path / "p.csv")]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    predictions = pd.read_csv(tmp_path / "p.csv")
    classifier = Classifier.load(ensemble_run)
    expected = classifier.predict_arrays(_pixels(test["path"]))[:, 1]
    assert np.allclose(predictions.set_index("path").loc[test["path"], "probability"], expected, atol=1e-5)
    targets = (test["label"] == "PNEUMONIA").to_numpy()
    assert report["n_images"] == len(test)
    assert report["metrics"]["roc_auc"]["value"] == pytest.approx(roc_auc_score(targets, expected), abs=1e-9)


def test_explain_maps_the_joined_network(ensemble_run: Path, tmp_path: Path) -> None:
    split = pd.read_csv(ensemble_run / "split.csv")
    paths = split.loc[split["split"] == "test", "path"].tolist()[:2]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["explain", str(ensemble_run), *paths, "--method", "gradcam", "--out", str(tmp_path)]) == 0
    with np.load(tmp_path / "maps.npz") as maps:
        assert sorted(maps.files) == sorted(f"{Path(p).stem}/gradcam" for p in paths)
        assert all(maps[name].shape == (64, 64) and np.isfinite(maps[name]).all() for name in maps.files)


def test_compare_gives_the_joined_networks_validation_figures(ensemble_run: Path, tmp_path: Path) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["compare", str(ensemble_run / MEMBERS / "0"), str(ensemble_run), "--csv",
                     str(tmp_path / "c.csv")]) == 0
    table = pd.read_csv(tmp_path / "c.csv")
    summary = json.loads((ensemble_run / "summary.json").read_text())
    assert table["model"].tolist() == ["cxr-resnet", "cxr-resnet-ensemble"]
    assert table["roc_auc"][1] == pytest.approx(summary["val_auc"], abs=1e-6)
    assert table["parameters"][1] > 1.9 * table["parameters"][0]


def test_an_interrupted_ensemble_resumes_with_its_unfinished_member(ensemble_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(ensemble_run, run)
    for name in (BEST, "summary.json", "calibration.json"):
        (run / name).unlink()
    shutil.rmtree(run / MEMBERS / "1")
    done = (run / MEMBERS / "0" / BEST).stat().st_mtime_ns
    config = TrainConfig.from_yaml(run / "config.yaml", out=str(run))
    with pytest.raises(ConfigError, match="pass --resume"):
        train(config, progress=False)
    train(config, resume=True, progress=False)
    assert (run / MEMBERS / "0" / BEST).stat().st_mtime_ns == done  # the finished member was not trained again
    assert torch.equal(torch.load(run / MEMBERS / "1" / BEST, weights_only=True)["model"]["fc.weight"],
                       torch.load(ensemble_run / MEMBERS / "1" / BEST, weights_only=True)["model"]["fc.weight"])
    assert (run / BEST).is_file()
    with pytest.raises(ConfigError, match="already holds a run"):
        train(config, resume=True, progress=False)


def test_cross_validation_scores_each_fold_with_its_joined_network(chest_xray: Path, tmp_path: Path) -> None:
    out = tmp_path / "cv"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["cv", "--data", str(chest_xray / "train"), "--model", "cxr-resnet-ensemble", "--limit", "60",
                     "--image-size", "64", "--epochs", "1", "--folds", "2", "--out", str(out)]) == 0
    summary = json.loads(printed.getvalue())
    oof = pd.read_csv(out / "oof_predictions.csv")
    for fold, row in enumerate(summary["per_fold"]):
        assert (out / f"fold_{fold}" / MEMBERS / "1" / BEST).is_file()
        fold_summary = json.loads((out / f"fold_{fold}" / "summary.json").read_text())
        assert row["val_auc"] == fold_summary["val_auc"] and row["best_epoch"] is None
        scored = oof[oof["fold"] == fold]
        assert fold_summary["val_auc"] == pytest.approx(
            roc_auc_score(scored["label"] == "PNEUMONIA", scored["p_PNEUMONIA"]), abs=1e-9)
    assert summary["pooled_val_auc"]["auc"] == pytest.approx(
        roc_auc_score(oof["label"] == "PNEUMONIA", oof["p_PNEUMONIA"]), abs=1e-9)
