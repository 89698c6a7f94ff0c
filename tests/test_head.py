"""The head on extracted features and the two-stage model: the head's layers, the features the backbone gives, the
baseline equal to scikit-learn's, and a real run (quick shallow-cnn backbone, its features of ~300 shared images)
that predict, evaluate and explain take unchanged, evaluate reproducing the head's test metrics."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from lungscope.cli import main
from lungscope.data.io import read_image
from lungscope.data.labels import label_for
from lungscope.data.splits import load_manifest
from lungscope.errors import ConfigError
from lungscope.evaluation.evaluate import evaluate_run
from lungscope.features import FeatureExtractor, extract_features
from lungscope.features.parquet import FeatureWriter, read_features
from lungscope.inference import Classifier, fingerprint
from lungscope.models import classifier_head, create_model, gradcam_layer, last_conv_layer
from lungscope.models.two_stage import dense_head
from lungscope.training.head import (
    HeadConfig,
    _layer_option,
    _Rows,
    fit_baseline,
    fit_dense_head,
    train_head,
)
from lungscope.training.run_folder import RunFolder

LAYER = "features.2"  # shallow-cnn's pooled 64-channel map: small vectors keep the real run quick


def _rows(x: np.ndarray, y: np.ndarray) -> _Rows:
    return _Rows(x.astype(np.float32), y, np.array([f"p{i // 2}" for i in range(len(y))]), pd.DataFrame())


def _blobs(n: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Made-up features: one Gaussian cloud per class, columns on scales from 1e-3 to 1e3 (standardising matters)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    centres = np.random.default_rng(99).normal(0, 1.5, (n_classes, 12))
    x = (centres[y] + rng.normal(0, 1, (n, 12))) * np.logspace(-3, 3, 12)
    return x, y


def test_dense_head_is_sigmoid_layers_with_dropout_then_logits() -> None:
    head = dense_head(10, 3, [8, 4], 0.3)
    assert [type(m) for m in head] == [nn.Linear, nn.Sigmoid, nn.Dropout] * 2 + [nn.Linear]
    assert [(m.in_features, m.out_features) for m in head if isinstance(m, nn.Linear)] == [(10, 8), (8, 4), (4, 3)]
    assert all(m.p == 0.3 for m in head if isinstance(m, nn.Dropout))
    assert [type(m) for m in dense_head(10, 3, [])] == [nn.Linear]  # logistic regression
    for hidden, dropout in (([0], 0.5), ([8], 1.0), ([8], -0.1)):
        with pytest.raises(ConfigError):
            dense_head(10, 3, hidden, dropout)


def test_two_stage_backbone_gives_the_input_of_the_final_linear() -> None:
    torch.manual_seed(0)
    trained = create_model("three-block-cnn", num_classes=2).eval()
    model = create_model("two-stage", num_classes=3, backbone="three-block-cnn", hidden=[16]).eval()
    model.load_backbone(trained.state_dict(), source="test")
    seen: list[torch.Tensor] = []
    classifier_head(trained).register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    x = torch.rand(2, 1, 128, 128)
    with torch.no_grad():
        trained(x)
        features = model.backbone(x)
        assert model(x).shape == (2, 3)
    assert features.shape == (2, 128) and torch.allclose(features, seen[0])
    # backbone (its final Linear gone) + head; Grad-CAM's default layer is the backbone's last convolution
    final = {"classifier.2.weight", "classifier.2.bias"}
    assert {f"backbone.{k}" for k in trained.state_dict() if k not in final} | {
        f"head.{k}" for k in model.head.state_dict()} == set(model.state_dict())
    assert last_conv_layer(model)[0] == "backbone.features.2.0"
    assert classifier_head(model) is model.head[-1]


def test_two_stage_named_layer_is_its_output_averaged_over_space() -> None:
    torch.manual_seed(0)
    trained = create_model("resnet18", num_classes=2).eval()
    model = create_model("two-stage", num_classes=3, layer="layer3", hidden=[]).eval()
    model.load_backbone(trained.state_dict(), source="test")
    seen: list[torch.Tensor] = []
    trained.layer3.register_forward_hook(lambda module, inputs, output: seen.append(output))
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        trained(x)
        features = model.backbone(x)
    assert features.shape == (2, 256) and torch.allclose(features, seen[0].mean(dim=(2, 3)), atol=1e-6)
    assert model.head[0].in_features == 256
    with pytest.raises(ConfigError, match="no layer 'layer9'.*layer3"):
        create_model("two-stage", layer="layer9")


def test_two_stage_cuts_a_network_torch_fx_cannot_trace() -> None:
    """cxr-resnet branches on tensors (fx cannot trace it): a hook stops the forward pass at the layer, the layers
    after it are dropped from the state, and Grad-CAM takes the last convolution kept, not the dropped maps."""
    torch.manual_seed(0)
    options = {"width": 8, "blocks": (1, 1, 1, 1)}
    trained = create_model("cxr-resnet", num_classes=2, **options).eval()
    model = create_model("two-stage", num_classes=3, backbone="cxr-resnet", backbone_options=options,
                         layer="features.5", hidden=[]).eval()
    model.load_backbone(trained.state_dict(), source="test")
    seen: list[torch.Tensor] = []
    trained.get_submodule("features.5").register_forward_hook(lambda module, inputs, output: seen.append(output))
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        trained(x)
        features = model.backbone(x)
    assert torch.allclose(features, seen[0].mean(dim=(2, 3)), atol=1e-6) and features.shape[1] == 16
    assert not any(key.startswith(("backbone.body.features.6", "backbone.body.fc")) for key in model.state_dict())
    name, _ = gradcam_layer(model)
    assert name == last_conv_layer(model)[0] and name.startswith("backbone.body.features.5.")


def test_layer_recorded_in_the_features_file_maps_to_the_model_option() -> None:
    assert _layer_option("fc:input", "resnet18", {}) is None
    assert _layer_option("classifier.0:input", "shallow-cnn", {}) is None
    assert _layer_option("layer3", "resnet18", {}) == "layer3"
    with pytest.raises(ConfigError, match="only the input of the final Linear"):
        _layer_option("layer4.1.conv2:input", "resnet18", {})


@pytest.mark.parametrize("n_classes", [3, 2])
def test_baseline_is_scikit_learn_logistic_regression_on_standardised_features(n_classes: int) -> None:
    x, y = _blobs(400, n_classes, seed=1)
    train, val = _rows(x[:300], y[:300]), _rows(x[300:], y[300:])
    config = HeadConfig(baseline_c=[0.001, 0.1, 10.0])
    head, fit = fit_baseline(train, val, n_classes, config)
    losses = {}
    for c in config.baseline_c:
        pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000)).fit(train.x, train.y)
        losses[c] = log_loss(val.y, pipeline.predict_proba(val.x))
        if c == fit["C"]:
            expected = pipeline.predict_proba(val.x)
    assert fit["C"] == min(losses, key=losses.get)
    with torch.no_grad():  # the head takes raw features: the scaler is folded into its Linear
        probabilities = torch.softmax(head(torch.from_numpy(val.x)), dim=1).numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)


def test_dense_head_learns_keeps_its_best_epoch_and_stops_early(tmp_path: Path) -> None:
    x, y = _blobs(600, 3, seed=2)
    train, val, test = _rows(x[:400], y[:400]), _rows(x[400:500], y[400:500]), _rows(x[500:], y[500:])
    config = HeadConfig(hidden=[16], dropout=0.2, epochs=500, patience=5)
    head, fit = fit_dense_head(train, val, 3, config, RunFolder(tmp_path), progress=False)
    history = pd.read_csv(tmp_path / "metrics.csv")
    assert fit["epochs_run"] < 500 and fit["epochs_run"] - fit["best_epoch"] == 5 == len(history) - fit["best_epoch"]
    assert fit["val_loss"] == pytest.approx(history["val_loss"].min(), rel=1e-5)
    with torch.no_grad():
        accuracy = (head(torch.from_numpy(test.x)).argmax(1).numpy() == test.y).mean()
    assert accuracy > 0.9  # on raw features whose scales differ by 1e6: the standardisation is in the head


# -- a real run ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def features(quick_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three-class features of the quick run's images (and of one corrupt made-up file) at shallow-cnn's pooled map."""
    folder = tmp_path_factory.mktemp("features")
    broken = folder / "person9999_bacteria_1.jpeg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    split = load_manifest(quick_run / "split.csv")
    rows = [(p, label_for(p, "three-class"), q) for p, q in zip(split["path"], split["patient_id"])]
    rows.append((str(broken), "BACTERIA", "person9999"))
    pd.DataFrame(rows, columns=["path", "label", "patient_id"]).to_csv(folder / "images.csv", index=False)
    extract_features(quick_run, folder / "images.csv", folder / "f.parquet", labels="three-class", layer=LAYER)
    return folder / "f.parquet"


@pytest.fixture(scope="module")
def head_run(features: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("head") / "run"
    train_head(HeadConfig(features=str(features), out=str(out), hidden=[16], epochs=80, patience=10,
                          n_resamples=100), progress=False)
    return out


def test_run_folder_keeps_the_backbone_split_and_reports_both_heads(head_run: Path, quick_run: Path) -> None:
    assert {p.name for p in head_run.iterdir()} >= {
        "best.pt", "baseline.pt", "calibration.json", "config.yaml", "curves.png", "metrics.csv", "split.csv",
        "summary.json"}
    summary = json.loads((head_run / "summary.json").read_text())
    assert summary["n_error_rows"] == 1 and summary["feature_dim"] == 64 and summary["layer"] == LAYER
    assert summary["split"] == str(quick_run / "split.csv")
    backbone_side = dict(zip(*load_manifest(quick_run / "split.csv")[["path", "split"]].T.to_numpy()))
    head_split = load_manifest(head_run / "split.csv")
    assert len(head_split) == len(backbone_side)  # every readable image, none but the backbone run's
    assert (head_split["split"] == head_split["path"].map(backbone_side)).all()
    assert set(head_split["label"]) == {"NORMAL", "BACTERIA", "VIRUS"}
    for name in ("dense", "baseline"):
        for side in ("val", "test"):
            report = summary[name][side]
            assert report["n_images"] == (head_split["split"] == side).sum()
            assert set(report["per_class"]) == {"NORMAL", "BACTERIA", "VIRUS"}
            for entry in (report["metrics"]["accuracy"], report["metrics"]["roc_auc"]):
                low, high = entry["ci95"]
                assert low <= entry["value"] <= high and high - low > 0
            assert np.sum(report["confusion_matrix"]) == report["n_images"]
    assert summary["baseline"]["C"] in HeadConfig().baseline_c
    assert HeadConfig(**yaml.safe_load((head_run / "config.yaml").read_text())).hidden == [16]


@pytest.mark.parametrize(("checkpoint", "head"), [("", "dense"), ("baseline.pt", "baseline")])
def test_evaluate_reproduces_the_heads_test_metrics(head_run: Path, checkpoint: str, head: str) -> None:
    expected = json.loads((head_run / "summary.json").read_text())[head]["test"]
    evaluation = evaluate_run(head_run / checkpoint, head_run / "split.csv", split="test", n_resamples=100)
    assert evaluation.report["n_images"] == expected["n_images"]
    assert evaluation.report["confusion_matrix"] == expected["confusion_matrix"]
    for name, entry in expected["metrics"].items():
        assert evaluation.report["metrics"][name]["value"] == pytest.approx(entry["value"], abs=1e-6)
        assert evaluation.report["metrics"][name]["ci95"] == pytest.approx(entry["ci95"], abs=1e-3)


def test_two_stage_run_predicts_and_explains(head_run: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    image = load_manifest(head_run / "split.csv")["path"].iloc[0]
    classifier = Classifier.load(head_run)
    assert classifier.classes == ["NORMAL", "BACTERIA", "VIRUS"] and classifier.image_size == 64
    (prediction,) = classifier.predict_files([image])
    assert prediction.error is None and prediction.probabilities.sum() == pytest.approx(1, abs=1e-5)
    assert main(["explain", str(head_run), image, "--out", str(tmp_path)]) == 0
    maps = np.load(tmp_path / "maps.npz")
    (gradcam,) = maps.values()
    assert gradcam.shape[-2:] == (64, 64) and np.abs(gradcam).max() > 0


@pytest.mark.parametrize("layer", [None, LAYER])
def test_two_stage_backbone_gives_the_extractors_features(quick_run: Path, chest_xray: Path, layer: str | None) -> None:
    """The two-stage model reads its backbone's layer as ``lungscope features`` did: the same vectors of real
    images (so a head trained on the file classifies the model's own features); the classifier stays whole."""
    classifier = Classifier.load(quick_run)
    extractor = FeatureExtractor(classifier, layer)
    model = create_model("two-stage", num_classes=3, backbone="shallow-cnn", hidden=[8],
                         layer=_layer_option(extractor.layer, "shallow-cnn", {})).eval()
    model.load_backbone(classifier.model.state_dict(), source=str(quick_run))
    paths = [str(p) for p in sorted((chest_xray / "train" / "PNEUMONIA").iterdir())[:4]]
    batch = torch.stack([classifier.transform(read_image(path).pixels) for path in paths])
    with torch.no_grad():
        computed = model.backbone(batch).numpy()
        assert classifier.model(batch).shape == (4, 2)
    extracted = np.stack([row["features"] for row in extractor.extract_files(paths)])
    assert computed.shape == (4, extractor.feature_dim) and np.allclose(computed, extracted, atol=1e-5)


def test_features_of_a_changed_backbone_are_refused(features: Path, quick_run: Path, tmp_path: Path) -> None:
    """A features file is bound to the checkpoint it came from: a backbone retrained since is refused in one line."""
    frame, metadata = read_features(features)
    assert metadata["checkpoint_sha256"] == fingerprint(quick_run)
    with FeatureWriter(tmp_path / "stale.parquet", {**metadata, "checkpoint_sha256": "0" * 64}) as writer:
        writer.write_rows(frame.to_dict("records"))
    with pytest.raises(ConfigError, match="extracted from another version of .*best.pt .*extract the features again"):
        train_head(HeadConfig(features=str(tmp_path / "stale.parquet"), out=str(tmp_path / "run"), epochs=2,
                              n_resamples=10), progress=False)
    assert not (tmp_path / "run").exists()


def test_wrong_labels_and_an_existing_run_are_refused(features: Path, head_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="carry three-class labels, not binary"):
        train_head(HeadConfig(features=str(features), out=str(tmp_path / "run"), labels="binary"), progress=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        train_head(HeadConfig(features=str(features), out=str(head_run)), progress=False)


def test_cli_trains_and_prints_both_heads(features: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train-head", str(features), "--out", str(out), "--labels", "three-class", "--hidden", "8",
                 "--epochs", "5", "--resamples", "20"]) == 0
    printed = capsys.readouterr().out
    assert "dense    test" in printed and "baseline val" in printed and "roc_auc" in printed
    assert json.loads((out / "summary.json").read_text())["dense"]["hidden"] == [8]


def test_cli_missing_features_file_is_one_line_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lungscope.cli", "train-head", str(tmp_path / "none.parquet"), "--out", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("lungscope train-head: error:") and "none.parquet" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_two_stage_model_keeps_its_backbones_preprocessing(quick_run: Path, tmp_path: Path) -> None:
    """A head on a ``roi: lungs`` backbone predicts on lung crops, as its features were made (it used to forget the
    crop and predict on whole images)."""
    backbone = tmp_path / "backbone"
    shutil.copytree(quick_run, backbone)
    state = torch.load(backbone / "best.pt", weights_only=True)
    state["preprocessing"] = {**state["preprocessing"], "roi": "lungs", "roi_margin": 0.07, "clahe": True}
    torch.save(state, backbone / "best.pt")
    split = load_manifest(backbone / "split.csv")
    split["label"] = [label_for(p, "three-class") for p in split["path"]]
    rows = split.groupby(["split", "label"]).head(6)[["path", "label", "patient_id"]]
    rows.to_csv(tmp_path / "images.csv", index=False)
    extract_features(backbone, tmp_path / "images.csv", tmp_path / "f.parquet", labels="three-class", layer=LAYER)
    out = tmp_path / "head"
    train_head(HeadConfig(features=str(tmp_path / "f.parquet"), out=str(out), hidden=[4], epochs=2, n_resamples=20),
               progress=False)
    head = Classifier.load(out)
    assert head.preprocessing == Classifier.load(backbone).preprocessing
    assert (head.config["roi"], head.config["roi_margin"], head.config["clahe"]) == ("lungs", 0.07, True)
    assert head.roi is not None and head.roi.margin == 0.07
