"""Explanation maps on a trained run and a torchvision backbone: shapes, signs, targets, views, overlays, layers,
agreement with pytorch-grad-cam, the trust checks and the explain commands."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import lungscope.explain.files as files_module
from lungscope.cli import main
from lungscope.data.io import read_image
from lungscope.errors import ConfigError
from lungscope.evaluation.formatting import format_probability
from lungscope.explain import (
    METHODS,
    SanityWarning,
    box_region,
    cascading_randomization,
    deletion_insertion,
    explain,
    explanation_figure,
    filter_grid_figure,
    heatmap_rgba,
    layer_activations,
    lung_share,
    map_to_image,
    overlay,
    signed_view,
    top_channels,
    untrusted_reason,
)
from lungscope.explain.files import check_files, explain_files
from lungscope.explain.views import content_box, prediction_title
from lungscope.inference import Classifier
from lungscope.models import create_model
from lungscope.training import TrainConfig, train

FAST = {"integrated-gradients": {"steps": 8}, "occlusion": {"window": 16, "stride": 8}}


@pytest.fixture(scope="module")
def run(chest_xray: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("explain") / "run"
    config = TrainConfig(data=str(chest_xray / "train"), out=str(out), model="shallow-cnn", limit=300, epochs=2, seed=1)
    train(config, progress=False)
    return out


@pytest.fixture(scope="module")
def classifier(run: Path) -> Classifier:
    return Classifier.load(run)


@pytest.fixture(scope="module")
def real_paths(chest_xray: Path) -> list[Path]:
    train_dir = chest_xray / "train"
    return sorted((train_dir / "PNEUMONIA").iterdir())[:3] + sorted((train_dir / "NORMAL").iterdir())[:3]


@pytest.fixture(scope="module")
def batch(classifier: Classifier, real_paths: list[Path]) -> torch.Tensor:
    return torch.stack([classifier.transform(read_image(p).pixels) for p in real_paths])


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in model.state_dict().items()}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_on_the_trained_run(classifier: Classifier, batch: torch.Tensor, method: str) -> None:
    model = classifier.model.train()  # explain must switch to eval for the call and back after
    before = _state(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SanityWarning)
        explanation = explain(model, batch, method, **FAST.get(method, {}))
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    assert explanation.maps.shape == (6, 64, 64) and explanation.maps.dtype == np.float32
    assert np.isfinite(explanation.maps).all() and np.abs(explanation.maps).max() > 0
    with torch.no_grad():
        probabilities = torch.softmax(model(batch), dim=1)
    np.testing.assert_array_equal(explanation.targets, probabilities.argmax(dim=1).numpy())
    np.testing.assert_allclose(explanation.scores, probabilities.max(dim=1).values.numpy(), rtol=1e-5)
    assert explanation.method == method
    assert explanation.layer == ("features.0" if METHODS[method].uses_layer else None)


@pytest.mark.parametrize("method", ["gradcam", "integrated-gradients", "occlusion"])
def test_signs_are_kept(classifier: Classifier, batch: torch.Tensor, method: str) -> None:
    maps = explain(classifier.model, batch, method, **FAST.get(method, {})).maps
    assert (maps > 0).any() and (maps < 0).any()


def test_explaining_another_class_flips_the_evidence(classifier: Classifier, batch: torch.Tensor) -> None:
    """A trained two-class model moves its two logits in opposite directions: the maps of the two classes must be
    strongly anti-correlated, and their probabilities sum to 1."""
    first = explain(classifier.model, batch, "integrated-gradients", target=0, steps=8)
    second = explain(classifier.model, batch, "integrated-gradients", target=[1] * 6, steps=8)
    assert (first.targets == 0).all() and (second.targets == 1).all()
    np.testing.assert_allclose(first.scores + second.scores, 1, rtol=1e-5)
    assert np.corrcoef(first.maps.ravel(), second.maps.ravel())[0, 1] < -0.5


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_on_resnet18_with_three_channels(method: str) -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=2, in_channels=3).eval()
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    assert relus and all(m.inplace for m in relus)
    images = torch.randn(2, 3, 48, 40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SanityWarning)
        explanation = explain(model, images, method, **FAST.get(method, {}))
    assert explanation.maps.shape == (2, 48, 40) and np.abs(explanation.maps).max() > 0
    assert all(m.inplace for m in relus)  # restored after the call
    if method in ("gradcam", "guided-gradcam"):
        assert explanation.layer == "layer4.1.conv2"


def test_guided_backprop_guides_leaky_relus() -> None:
    """Captum hooks only nn.ReLU; three-block-cnn has LeakyReLUs, which must be guided too (not plain gradients)."""
    torch.manual_seed(0)
    model = create_model("three-block-cnn").eval()
    images = torch.randn(2, 1, 128, 128, requires_grad=True)
    model(images)[:, 0].sum().backward()
    gradient = images.grad[:, 0].numpy()
    guided = explain(model, images.detach(), "guided-backprop", target=0, warn=False).maps
    deconvolution = explain(model, images.detach(), "deconvolution", target=0, warn=False).maps
    assert not np.allclose(guided, gradient, atol=1e-6) and not np.allclose(guided, deconvolution, atol=1e-6)
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in model.modules())


def test_single_logit_head_explains_the_logit() -> None:
    torch.manual_seed(0)
    model = create_model("shallow-cnn", num_classes=1).eval()
    images = torch.randn(3, 1, 64, 64)
    explanation = explain(model, images, "gradcam")
    assert (explanation.targets == 0).all()
    with torch.no_grad():
        np.testing.assert_allclose(explanation.scores, torch.sigmoid(model(images))[:, 0].numpy(), rtol=1e-5)
    assert explain(model, images, "guided-backprop", warn=False).maps.shape == (3, 64, 64)
    with pytest.raises(ConfigError, match="0..0"):
        explain(model, images, "gradcam", target=1)


def test_layers_by_name_and_bad_requests(classifier: Classifier, batch: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = create_model("three-block-cnn").eval()
    images = torch.randn(2, 1, 128, 128)
    assert explain(model, images, "gradcam").layer == "features.2.0"
    early = explain(model, images, "gradcam", layer="features.0.0")
    assert early.layer == "features.0.0" and early.maps.shape == (2, 128, 128)
    with pytest.raises(ConfigError, match="no layer 'nope'.*features.0.0"):
        explain(model, images, "gradcam", layer="nope")
    with pytest.raises(ConfigError, match="unknown explanation method"):
        explain(model, images, "lime")
    with pytest.raises(ConfigError, match="not a layer"):
        explain(model, images, "integrated-gradients", layer="features.0.0")
    with pytest.raises(ConfigError, match="unknown option window"):
        explain(model, images, "gradcam", window=3)
    with pytest.raises(ConfigError, match="got 2 targets for 6"):
        explain(classifier.model, batch, "gradcam", target=[0, 1])


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _reference_cam(model: torch.nn.Module, images: torch.Tensor, layer: str, targets: np.ndarray) -> np.ndarray:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with GradCAM(model=model, target_layers=[model.get_submodule(layer)]) as cam:
        return cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets])


def test_gradcam_agrees_with_pytorch_grad_cam(classifier: Classifier, batch: torch.Tensor) -> None:
    torch.manual_seed(0)
    resnet = create_model("resnet18").eval()
    resized = torch.nn.functional.interpolate(batch, size=96, mode="bilinear")
    for model, images in ((classifier.model, batch), (resnet, resized)):
        ours = explain(model, images, "gradcam", relu=True)
        reference = _reference_cam(model, images, ours.layer, ours.targets)
        for mine, theirs in zip(signed_view(ours.maps, "positive"), reference):
            assert _pearson(mine, theirs) >= 0.99
    # on ResNet's coarse 3x3 grid, the positive view of the signed map agrees too
    signed = explain(resnet, resized, "gradcam")
    for mine, theirs in zip(signed_view(signed.maps), _reference_cam(resnet, resized, signed.layer, signed.targets)):
        assert _pearson(mine, theirs) >= 0.99


def test_signed_views() -> None:
    values = np.array([[[-4.0, -1.0], [0.0, 2.0]], [[0.0, 0.0], [0.0, 0.0]]])
    np.testing.assert_allclose(signed_view(values, "positive")[0], [[0, 0], [0, 1]])
    np.testing.assert_allclose(signed_view(values, "negative")[0], [[1, 0.25], [0, 0]])
    np.testing.assert_allclose(signed_view(values, "absolute")[0], [[1, 0.25], [0, 0.5]])
    np.testing.assert_allclose(signed_view(values, "all")[0], [[-1, -0.25], [0, 0.5]])
    assert not signed_view(values, "all")[1].any()  # nothing to show stays zero, no NaN
    with pytest.raises(ConfigError, match="unknown sign"):
        signed_view(values, "both")


def test_overlay_is_transparent_below_the_threshold() -> None:
    image = np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(64, 48)
    view = np.zeros_like(image)
    view[10:20, 10:20] = 1.0
    view[30:40, 30:40] = 0.1
    rgba = heatmap_rgba(view, alpha=0.6, threshold=0.2)
    assert rgba.shape == (64, 48, 4)
    assert (rgba[..., 3][view < 0.2] == 0).all() and (rgba[10:20, 10:20, 3] == 0.6).all()
    blended = overlay(image, view, alpha=0.6, threshold=0.2)
    weak = view < 0.2
    np.testing.assert_allclose(blended[weak], np.repeat(image[weak][:, None], 3, axis=1), atol=1e-6)
    assert np.abs(blended[10:20, 10:20] - image[10:20, 10:20, None]).max() > 0.1
    # jet at 1.0 is dark red; the diverging map shows -1 as blue and +1 as red
    assert rgba[15, 15, 0] > rgba[15, 15, 2]
    signed = heatmap_rgba(np.array([[-1.0, 1.0]]), "all", threshold=0.0)
    assert signed[0, 0, 2] > signed[0, 0, 0] and signed[0, 1, 0] > signed[0, 1, 2]
    with pytest.raises(ConfigError, match="map_to_image"):
        overlay(image, view[:10])


def test_maps_go_back_onto_images_of_any_size() -> None:
    assert content_box((100, 200), 64, "pad") == (16, 0, 32, 64)
    assert content_box((100, 200), 64, "squash") == (0, 0, 64, 64)
    letterboxed = np.zeros((64, 64), dtype=np.float32)
    letterboxed[16:48] = 1.0  # content rows of a 2:1 landscape image
    np.testing.assert_allclose(map_to_image(letterboxed, (100, 200), "pad"), 1.0)
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    back = map_to_image(ramp, (300, 517))
    assert back.shape == (300, 517) and back[:, 0].max() < 0.02 and back[:, -1].min() > 0.98
    figure = explanation_figure(np.zeros((300, 517)), signed_view(back), title="PNEUMONIA (p = 0.9)")
    assert len(figure.axes) == 4 and figure._suptitle.get_text() == "PNEUMONIA (p = 0.9)"  # 3 panels + colour bar


def test_activations_top_channels_and_filters(classifier: Classifier, batch: torch.Tensor) -> None:
    activations = layer_activations(classifier.model, batch, "features.1")
    assert activations.shape == (6, 64, 62, 62) and (activations >= 0).all()  # after the ReLU
    overall = top_channels(activations[0], k=5)
    means = activations[0].mean(dim=(1, 2))
    assert [c for c, _ in overall] == means.argsort(descending=True)[:5].tolist()
    made_up = torch.zeros(2, 10, 10)
    made_up[0, :5, :5] = 1.0  # channel 0 fires in the top-left corner only
    made_up[1] = 0.5  # channel 1 fires everywhere, more on average
    assert top_channels(made_up, k=1)[0][0] == 1
    assert top_channels(made_up, k=1, region=box_region((0, 0, 0.5, 0.5)))[0] == (0, 1.0)
    with pytest.raises(ConfigError, match="not give a feature map"):
        layer_activations(classifier.model, batch, "classifier.0")
    weights = classifier.model.features[0].weight.detach()
    assert len([ax for ax in filter_grid_figure(weights).axes if ax.images]) == 64


def test_deletion_insertion_curves(classifier: Classifier, batch: torch.Tensor) -> None:
    explanation = explain(classifier.model, batch, "gradcam")
    targets = torch.as_tensor(explanation.targets)
    deletion, insertion = deletion_insertion(classifier.model, batch, explanation.maps, targets, steps=8)
    assert deletion.shape == insertion.shape == (6, 9)
    np.testing.assert_allclose(deletion[:, 0], explanation.scores, rtol=1e-4)  # nothing removed yet
    np.testing.assert_allclose(insertion[:, -1], explanation.scores, rtol=1e-4)  # everything inserted back
    with torch.no_grad():
        grey = torch.softmax(classifier.model(torch.zeros(1, 1, 64, 64)), dim=1)[0]
    np.testing.assert_allclose(deletion[:, -1], grey[targets].numpy(), rtol=1e-4)  # all pixels at the baseline


def test_lung_share() -> None:
    maps = np.zeros((2, 4, 4))
    maps[0, :, :2] = 1.0  # half of the positive mass on the left
    maps[0, :, 2:] = -5.0  # negative values do not count
    masks = np.zeros((2, 4, 4))
    masks[:, :2, :] = 1.0  # the top half is lung
    share = lung_share(maps, masks)
    assert share[0] == pytest.approx(0.5) and np.isnan(share[1])


def test_gradcam_changes_more_than_guided_backprop_under_randomisation(
    classifier: Classifier, batch: torch.Tensor
) -> None:
    model = classifier.model
    before = _state(model)
    targets = torch.as_tensor(explain(model, batch, "gradcam").targets)
    original = {method: explain(model, batch, method, targets, warn=False).maps
                for method in ("gradcam", "guided-backprop")}
    cascade = cascading_randomization(model, batch, targets, original)
    assert [step["layer"] for step in cascade["gradcam"]] == ["classifier.0", "features.0"]
    rho = {method: np.mean([step["spearman"] for step in steps]) for method, steps in cascade.items()}
    assert rho["gradcam"] < rho["guided-backprop"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_explain_check_report_and_warnings(run: Path, lung_masks: Path, tmp_path: Path) -> None:
    report = check_files(run, lung_masks / "images", tmp_path / "check.json", n=3, masks=lung_masks / "masks",
                         methods=["gradcam", "guided-backprop"], device="cpu", progress=False)
    written = json.loads((tmp_path / "check.json").read_text())
    assert written == json.loads((run / "explain_check.json").read_text())
    assert (tmp_path / "check.png").stat().st_size > 0
    assert set(written["methods"]) == {"gradcam", "guided-backprop"} and written["images"] == 3
    for entry in written["methods"].values():
        assert {"deletion_auc", "insertion_auc", "randomization_spearman", "flagged", "lung_share"} <= set(entry)
        assert 0 <= entry["deletion_auc"] <= 1 and 0 <= entry["insertion_auc"] <= 1
        assert isinstance(entry["flagged"], bool) and 0 <= entry["lung_share"] <= 1
    assert 0.1 < report["lung_area_fraction"] < 0.6
    # explain warns for methods known from the literature, and for those this run's check flagged
    assert untrusted_reason("gradcam", "default") is None and "Adebayo" in untrusted_reason("guided-backprop")
    written["methods"]["gradcam"].update(flagged=True, randomization_spearman=0.8)
    (run / "explain_check.json").write_text(json.dumps(written))
    assert "0.80" in untrusted_reason("gradcam", run)
    (run / "explain_check.json").unlink()
    with pytest.warns(SanityWarning, match="Adebayo"):
        explain(create_model("shallow-cnn"), torch.zeros(1, 1, 64, 64), "guided-gradcam")


def test_cli_explain_writes_figures_and_maps_and_skips_a_bad_file(
    run: Path, real_paths: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "broken.png").write_text("not an image")
    for path in real_paths[:2]:
        (folder / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "out"
    code = main(["explain", str(run), str(folder), str(real_paths[3]), "--method", "gradcam", "guided-backprop",
                 "--sign", "all", "--out", str(out), "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "not an image" in err and "guided-backprop maps may not reflect" in err
    stems = [p.stem for p in (*real_paths[:2], real_paths[3])]
    with np.load(out / "maps.npz") as maps:
        assert sorted(maps.files) == sorted(f"{s}/{m}" for s in stems for m in ("gradcam", "guided-backprop"))
        assert maps[f"{stems[0]}/gradcam"].shape == (64, 64)
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{s}_{m}.png" for s in stems
                                                                for m in ("gradcam", "guided-backprop"))


def test_cli_activations_filters_and_check(run: Path, real_paths: list[Path], lung_masks: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["activations", str(run), str(real_paths[0]), "--layer", "features.1", "--top", "4",
                 "--region", "0.2,0.2,0.5,0.8", "--out", str(out), "--device", "cpu"]) == 0
    assert main(["filters", str(run), "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    stem = real_paths[0].stem
    assert names == {f"{stem}_features.1_activations.png", f"{stem}_features.1_top4.png", "filters_features.0.png"}
    assert main(["filters", str(run), "--layer", "classifier.0", "--out", str(out)]) == 1
    code = main(["explain-check", str(run), "--data", str(lung_masks / "images"), "--n", "2", "--masks",
                 str(lung_masks / "masks"), "--method", "gradcam", "--json", str(tmp_path / "check.json"),
                 "--device", "cpu"])
    assert code == 0 and set(json.loads((tmp_path / "check.json").read_text())["methods"]) == {"gradcam"}
    (run / "explain_check.json").unlink()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_gpu_maps_match_cpu_maps(classifier: Classifier, batch: torch.Tensor) -> None:
    cpu = explain(classifier.model, batch, "gradcam").maps
    gpu = explain(classifier.model.to("cuda"), batch, "gradcam").maps
    classifier.model.to("cpu")
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-6)


def test_the_sanity_warning_comes_from_the_runs_own_check_when_there_is_one(tmp_path: Path) -> None:
    literature = untrusted_reason("guided-gradcam", tmp_path)  # no explain-check in this run folder
    assert "Adebayo" in literature and "not a measurement of this model" in literature
    check = {"methods": {"guided-gradcam": {"flagged": False, "randomization_spearman": 0.25},
                         "guided-backprop": {"flagged": True, "randomization_spearman": 0.91}}}
    (tmp_path / "explain_check.json").write_text(json.dumps(check))
    assert untrusted_reason("guided-gradcam", tmp_path) is None  # measured and not flagged: no warning
    assert untrusted_reason("guided-backprop", tmp_path) == (
        "its maps kept a rank correlation of 0.91 with those of randomised weights in this run's explain-check "
        f"({tmp_path / 'explain_check.json'}; flagged from 0.5)")
    assert "not a measurement of this model" in untrusted_reason("deconvolution", tmp_path)  # not measured


def test_figure_titles_give_the_positive_class_probability_like_predict(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A NORMAL call reads ``P(PNEUMONIA) = 0.138 - NORMAL``, the number the page, CSV and terminal show."""
    assert prediction_title(["NORMAL", "PNEUMONIA"], np.array([0.862, 0.138]), 0) == "P(PNEUMONIA) = 0.138 - NORMAL"
    assert prediction_title(["a", "b", "c"], np.array([0.2, 0.1, 0.7]), 2) == "P(c) = 0.700 - c"
    assert (prediction_title(["NORMAL", "PNEUMONIA"], np.array([0.086, 0.914]), 0, 0.9145)
            == "P(PNEUMONIA) = 0.9140 - NORMAL (threshold 0.9145)")
    assert (prediction_title(["NORMAL", "PNEUMONIA"], np.array([0.2, 0.8]), 1, 0.4)
            == "P(PNEUMONIA) = 0.800 - PNEUMONIA (threshold 0.400)")
    assert prediction_title(["a", "b", "c"], np.array([0.2, 0.1, 0.7]), 2, 0.5) == "P(c) = 0.700 - c"
    image = Path(__file__).resolve().parents[1] / "samples" / "NORMAL" / "IM-0133-0001.jpeg"
    bundled = Classifier.load("default")
    (row,) = bundled.predict_files([str(image)])
    assert bundled.decide(row.probabilities[None]).tolist() == [0]  # called NORMAL: P(called) != P(PNEUMONIA)
    titles = []
    drawn = files_module.explanation_figure

    def recorded(*args: object, title: str, **options: object) -> object:
        titles.append(title)
        return drawn(*args, title=title, **options)

    monkeypatch.setattr(files_module, "explanation_figure", recorded)
    explain_files("default", [image], tmp_path, methods=["gradcam"], device="cpu", progress=False)
    (title,) = titles
    probability = format_probability(row.probabilities[1])
    assert bundled.threshold is not None
    threshold = format_probability(bundled.threshold)
    assert title.startswith(f"{image.name}: P(PNEUMONIA) = {probability} - NORMAL (threshold {threshold}); gradcam")
