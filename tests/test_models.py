"""Model registry: every network builds, runs forward and backward, adapts channels/classes and loads weights."""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from lungscope.errors import ConfigError
from lungscope.models import (
    classifier_head,
    count_parameters,
    create_model,
    get_spec,
    last_conv_layer,
    list_models,
    register_model,
    registry,
    weights,
)
from lungscope.models.weights import check_pretrained_input
from lungscope.training import TrainConfig, train

# name: (input size, family, last conv (Grad-CAM's default layer), classifier head)
EXPECTED = {
    "cxr-resnet": (224, "paper", "cam", "fc"),
    "shallow-cnn": (64, "paper", "features.0", "classifier.0"),
    "five-block-cnn": (150, "paper", "features.block5.pointwise", "classifier.3"),
    "three-block-cnn": (128, "paper", "features.2.0", "classifier.2"),
    "alexnet-lrn-cnn": (227, "paper", "features.12", "classifier.6"),
    "resnet18": (224, "torchvision", "layer4.1.conv2", "fc"),
    "resnet50": (224, "torchvision", "layer4.2.conv3", "fc"),
    "densenet121": (224, "torchvision", "features.denseblock4.denselayer16.conv2", "classifier"),
    "vgg16": (224, "torchvision", "features.28", "classifier.6"),
    "vgg19": (224, "torchvision", "features.34", "classifier.6"),
    "alexnet": (224, "torchvision", "features.10", "classifier.6"),
    "efficientnet_b0": (224, "torchvision", "features.8.0", "classifier.1"),
    "mobilenet_v3_small": (224, "torchvision", "features.12.0", "classifier.3"),
    "mobilenet_v3_large": (224, "torchvision", "features.16.0", "classifier.3"),
    "cxr-resnet-ensemble": (224, "composite", "members.2.cam", "fc"),
    "two-stage": (224, "composite", "backbone.layer4.1.conv2", "head.6"),
}
PAPER_NETS = [name for name, (_, family, _, _) in EXPECTED.items() if family == "paper"]
RESNET18_FILE = Path(urlparse(torchvision.models.ResNet18_Weights.DEFAULT.url).path).name


@pytest.fixture(scope="module")
def alexnet_lrn() -> nn.Module:
    """Built once: its 177 M-weight first dense layer takes seconds to initialise."""
    torch.manual_seed(0)
    return create_model("alexnet-lrn-cnn")


def _imagenet_style_resnet18(seed: int) -> nn.Module:
    """A torchvision resnet18 as ImageNet weights come: 3 input channels, 1000 classes (random, seeded)."""
    torch.manual_seed(seed)
    return torchvision.models.resnet18().eval()


def _body(model: nn.Module) -> nn.Module:
    """A resnet without its fc: pooled 512-d features."""
    return nn.Sequential(*list(model.children())[:-1])


def _xrays(folder: Path, count: int, size: int) -> torch.Tensor:
    """The first ``count`` real X-rays of a folder as a (count, 1, size, size) batch in [0, 1]."""
    paths = sorted(folder.glob("*.jpeg"))[:count]
    pixels = [np.asarray(Image.open(p).convert("L").resize((size, size)), dtype=np.float32) / 255 for p in paths]
    return torch.from_numpy(np.stack(pixels))[:, None]


def test_registry_lists_every_network_with_its_input_size_and_family() -> None:
    specs = list_models()
    assert [s.name for s in specs if s.family != "segmentation"] == list(EXPECTED)  # paper, torchvision, composite
    assert [(s.name, s.input_size, s.encoder_of) for s in specs if s.family == "segmentation"] == [
        ("lung-unet", 128, None), ("cxr-unet", 224, "cxr-resnet")]
    assert get_spec("lung-unet").parameter_count() == count_parameters(create_model("lung-unet", num_classes=1))
    for spec in specs[: len(EXPECTED)]:
        assert (spec.input_size, spec.family) == EXPECTED[spec.name][:2]
        assert spec.description
        assert get_spec(spec.name) is spec
    assert get_spec("five-block-cnn").options == ["activation", "alpha"]
    assert get_spec("resnet18").options == []


@pytest.mark.parametrize("name", list(EXPECTED))
def test_forward_backward_layers_and_parameter_count(name: str, request: pytest.FixtureRequest) -> None:
    size, _, conv_name, head_name = EXPECTED[name]
    torch.manual_seed(0)
    model = request.getfixturevalue("alexnet_lrn") if name == "alexnet-lrn-cnn" else create_model(name)
    conv_layer_name, conv = last_conv_layer(model)
    assert conv_layer_name == conv_name and conv is model.get_submodule(conv_name)
    head = classifier_head(model)
    assert head is model.get_submodule(head_name) and head.out_features == 2
    seen: list[torch.Size] = []
    hook = conv.register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    logits = model(torch.rand(1, 1, size, size))  # batch 1 keeps vgg19 & co. quick
    hook.remove()
    assert logits.shape == (1, 2)
    assert len(seen) == 1 and seen[0][2] >= 2 and seen[0][3] >= 2  # a spatial map for Grad-CAM
    logits[:, 1].sum().backward()  # one class: centred logits (cxr-resnet) sum to a constant
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1
    assert torch.isfinite(first.weight.grad).all() and first.weight.grad.abs().sum() > 0
    assert head.weight.grad.abs().sum() > 0
    assert count_parameters(model) == get_spec(name).parameter_count()  # the meta-device count the CLI prints


@pytest.mark.parametrize("name", list(EXPECTED))
@pytest.mark.parametrize(("num_classes", "in_channels"), [(1, 1), (3, 3)])
def test_num_classes_and_in_channels(name: str, num_classes: int, in_channels: int) -> None:
    size = EXPECTED[name][0]
    with torch.device("meta"):  # shapes only: no weights allocated
        model = create_model(name, num_classes=num_classes, in_channels=in_channels)
        logits = model(torch.zeros(2, in_channels, size, size))
    assert logits.shape == (2, num_classes)
    assert next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels == in_channels
    assert classifier_head(model).out_features == num_classes


@pytest.mark.parametrize(
    ("name", "size", "grid"),
    [("shallow-cnn", 96, 31), ("five-block-cnn", 224, 4), ("three-block-cnn", 200, 16), ("alexnet-lrn-cnn", 35, 13)],
)
def test_paper_nets_keep_their_layout_at_other_input_sizes(name: str, size: int, grid: int) -> None:
    with torch.device("meta"):
        model = create_model(name)
        assert model.pool.output_size == (grid, grid)  # the grid of the stated size, where the pool is the identity
        assert model(torch.zeros(2, 1, size, size)).shape == (2, 2)


def test_single_logit_head_trains_with_bce() -> None:
    torch.manual_seed(0)
    model = create_model("shallow-cnn", num_classes=1)
    logits = model(torch.rand(4, 1, 64, 64))
    loss = nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([[0.0], [1.0], [0.0], [1.0]]))
    loss.backward()
    assert logits.shape == (4, 1) and torch.isfinite(loss)


def test_shallow_cnn_learns_real_xrays(chest_xray: Path) -> None:
    """Gradients flow end to end: the net fits 8 real radiographs (4 normal, 4 pneumonia) within a few steps."""
    x = torch.cat([_xrays(chest_xray / "train" / "NORMAL", 4, 64), _xrays(chest_xray / "train" / "PNEUMONIA", 4, 64)])
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    torch.manual_seed(0)
    model = create_model("shallow-cnn")
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        optimiser.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert (model(x).argmax(1) == y).all()


def test_five_block_cnn_activations() -> None:
    def kinds(model: nn.Module, kind: type[nn.Module]) -> list[nn.Module]:
        return [m for m in model.modules() if isinstance(m, kind)]

    relu = create_model("five-block-cnn")
    assert len(kinds(relu, nn.ReLU)) == 11 and not kinds(relu, nn.LeakyReLU) and not kinds(relu, nn.PReLU)
    for options, slope in (({}, 0.01), ({"alpha": 0.2}, 0.2)):
        leaky = create_model("five-block-cnn", activation="leaky_relu", **options)
        assert [m.negative_slope for m in kinds(leaky, nn.LeakyReLU)] == [slope] * 11

    prelu = create_model("five-block-cnn", activation="prelu")
    slopes = kinds(prelu, nn.PReLU)
    assert [p.weight.numel() for p in slopes] == [16, 16, 32, 32, 64, 64, 128, 128, 256, 256, 128]  # one per channel
    assert count_parameters(prelu) == count_parameters(relu) + 1120
    prelu(torch.rand(2, 1, 150, 150)).sum().backward()
    assert all(p.weight.requires_grad and p.weight.grad.abs().sum() > 0 for p in slopes)  # learnable


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"activation": "gelu"}, "unknown activation 'gelu'; choose one of relu, leaky_relu, prelu"),
        ({"activation": "relu", "alpha": 0.1}, "alpha applies only to activation 'leaky_relu'"),
        ({"activation": "leaky_relu", "alpha": -0.1}, "alpha must be a number in [0, 1), got -0.1"),
        ({"activation": "leaky_relu", "alpha": "0.1"}, "alpha must be a number"),
        ({"dropout": 0.3}, "unknown option 'dropout' for model five-block-cnn; valid options: activation, alpha"),
        ({"input_size": 224}, "unknown option 'input_size'"),
    ],
)
def test_bad_options_raise_config_error(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        create_model("five-block-cnn", **options)
    assert message in str(error.value)


def test_alexnet_lrn_cnn_layout_and_initialisation(alexnet_lrn: nn.Module) -> None:
    kinds = [type(m).__name__ for m in alexnet_lrn.features]
    assert kinds[:8] == ["Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d"] * 2
    assert kinds.count("LocalResponseNorm") == 2 and kinds.count("MaxPool2d") == 3
    convs = [m for m in alexnet_lrn.features if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (96, (7, 7), (2, 2)), (128, (3, 3), (1, 1)), (256, (3, 3), (1, 1)), (256, (3, 3), (1, 1)), (256, (3, 3), (1, 1))
    ]  # fmt: skip
    fcs = [m for m in alexnet_lrn.classifier if isinstance(m, nn.Linear)]
    assert [(f.in_features, f.out_features) for f in fcs] == [(256 * 13 * 13, 4096), (4096, 4096), (4096, 2)]
    assert [m.p for m in alexnet_lrn.classifier if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    for layer in convs + fcs:
        assert abs(layer.weight.detach().std().item() - 0.01) < 0.0005
        assert abs(layer.weight.detach().mean().item()) < 0.001
    assert [layer.bias.detach().unique().tolist() for layer in convs + fcs] == [[0], [1], [0], [1], [1], [1], [1], [0]]


def test_alexnet_lrn_cnn_he_init_keeps_the_input(alexnet_lrn: nn.Module, chest_xray: Path) -> None:
    images = (_xrays(chest_xray / "train" / "NORMAL", 4, 227) - 0.5) / 0.25
    torch.manual_seed(0)
    he = create_model("alexnet-lrn-cnn", init="he").eval()
    alexnet_lrn.eval()
    try:
        with torch.no_grad():
            paper_logits, he_logits = alexnet_lrn(images), he(images)
    finally:
        alexnet_lrn.train()
    assert paper_logits.std(dim=0).max() < 1e-2  # the paper's init: every X-ray gets the same logits
    assert he_logits.std(dim=0).max() > 0.05  # He's: they depend on the image
    for layer in [m for m in he.modules() if isinstance(m, nn.Conv2d | nn.Linear)]:
        expected = (2 / layer.weight[0].numel()) ** 0.5
        assert abs(layer.weight.detach().std().item() - expected) < 0.1 * expected
        assert layer.bias.detach().abs().max() == 0
    with pytest.raises(ConfigError, match="choose alexnet or he"):
        create_model("alexnet-lrn-cnn", init="xavier")


def test_pretrained_path_with_imagenet_style_state_dict(tmp_path: Path, chest_xray: Path) -> None:
    source = _imagenet_style_resnet18(seed=1)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)

    model = create_model("resnet18", num_classes=2, in_channels=1, pretrained=path).eval()
    assert torch.equal(model.conv1.weight, source.conv1.weight.sum(dim=1, keepdim=True))
    theirs = source.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith("fc."):
            assert value.shape[0] == 2  # the new head, kept
        elif key != "conv1.weight":
            assert torch.equal(value, theirs[key]), key
    # Summed kernels on a grey X-ray == the original kernels on the same X-ray replicated to RGB.
    xray = _xrays(chest_xray / "train" / "PNEUMONIA", 2, 224)
    with torch.no_grad():
        assert torch.allclose(_body(model)(xray), _body(source)(xray.repeat(1, 3, 1, 1)), atol=1e-4)

    rgb = create_model("resnet18", num_classes=3, in_channels=3, pretrained=str(path))
    assert torch.equal(rgb.conv1.weight, source.conv1.weight) and rgb.fc.out_features == 3


def test_pretrained_path_with_lungscope_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trained = create_model("five-block-cnn", activation="prelu").eval()
    path = tmp_path / "best.pt"
    torch.save({"model": trained.state_dict(), "epoch": 3, "config": {"model": "five-block-cnn"}}, path)
    torch.manual_seed(1)
    loaded = create_model("five-block-cnn", activation="prelu", pretrained=path).eval()
    x = torch.rand(2, 1, 150, 150)
    with torch.no_grad():
        assert torch.equal(loaded(x), trained(x))
    # The 11 PReLU slopes have no place in a ReLU net.
    with pytest.raises(ConfigError, match=r"five-block-cnn: unexpected features\.block1\.act1\.weight, .*\(\+8 more\)"):
        create_model("five-block-cnn", pretrained=path)


def test_pretrained_state_dict_without_head_loads_backbone(tmp_path: Path) -> None:
    source = _imagenet_style_resnet18(seed=2)
    path = tmp_path / "backbone.pt"
    torch.save({k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}, path)
    model = create_model("resnet18", in_channels=3, pretrained=path)
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_mismatched_state_dict_names_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(_imagenet_style_resnet18(seed=3).state_dict(), path)
    with pytest.raises(ConfigError) as error:
        create_model("resnet50", pretrained=path)
    message = str(error.value)
    assert message.startswith(f"{path} does not fit resnet50: missing layer1.0.conv3.weight, ")
    assert "; wrong shape layer1.0.conv1.weight (64, 64, 3, 3) != (64, 64, 1, 1), " in message
    assert "more)" in message and "\n" not in message

    state = _imagenet_style_resnet18(seed=3).state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(state, path)
    with pytest.raises(ConfigError, match=r"wrong shape layer1\.0\.conv1\.weight \(64, 64, 1, 1\) != \(64, 64, 3, 3\)"):
        create_model("resnet18", pretrained=path)
    with pytest.raises(ConfigError, match=r"wrong shape conv1\.weight \(64, 3, 7, 7\) != \(64, 2, 7, 7\)"):
        create_model("resnet18", in_channels=2, pretrained=path)  # only 1 (summed) or 3 channels take RGB kernels


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such weights file"), (b"not a checkpoint", "not a PyTorch weights file"), ([1, 2], "not a state dict")],
)
def test_unreadable_weights_file(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "weights.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(ConfigError, match=message) as error:
        create_model("shallow-cnn", pretrained=path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_imagenet_for_a_paper_net_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="shallow-cnn has no ImageNet weights"):
        create_model("shallow-cnn", pretrained="imagenet")


@pytest.mark.parametrize("name", ["resnet18", "densenet121"])
def test_imagenet_without_network_is_one_line_config_error(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def offline(url: str, *args: object, **kwargs: object) -> None:
        calls.append(url)
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ConfigError) as error:
        create_model(name, pretrained="imagenet")
    message = str(error.value)
    assert len(calls) == 1 and calls[0].startswith("https://download.pytorch.org/models/")
    assert message.startswith(f"could not download ImageNet weights for {name} ([Errno -3] Temporary failure")
    assert f"in {tmp_path / 'hub' / 'checkpoints'} or pass pretrained=PATH" in message and "\n" not in message


def test_imagenet_weights_load_offline_from_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert Path(torch.hub.get_dir()) == tmp_path / "hub"  # torchvision caches under $TORCH_HOME/hub/checkpoints
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried to download"))
    source = _imagenet_style_resnet18(seed=4)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(source.state_dict(), tmp_path / "hub" / "checkpoints" / RESNET18_FILE)

    model = create_model("resnet18", num_classes=2, in_channels=1, pretrained="imagenet")
    assert torch.equal(model.conv1.weight, source.conv1.weight.sum(dim=1, keepdim=True))
    assert torch.equal(model.layer3[0].downsample[0].weight, source.layer3[0].downsample[0].weight)
    assert model.fc.out_features == 2


def test_count_parameters_matches_published_sizes() -> None:
    assert count_parameters(create_model("resnet18", num_classes=1000, in_channels=3)) == 11_689_512
    assert get_spec("vgg16").parameter_count(num_classes=1000, in_channels=3) == 138_357_544
    shallow = create_model("shallow-cnn")  # conv 1*64*9 + 64, fc 64*31*31*2 + 2
    assert count_parameters(shallow) == 640 + 123_010 == sum(p.numel() for p in shallow.parameters())


def test_unknown_model_and_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="unknown model 'resnet-18'; known models: .*resnet18"):
        create_model("resnet-18")
    with pytest.raises(ConfigError, match="unknown option 'dropout' for model resnet18; valid options: none"):
        create_model("resnet18", dropout=0.2)
    with pytest.raises(ConfigError, match="num_classes must be a positive integer, got 0"):
        create_model("shallow-cnn", num_classes=0)
    with pytest.raises(ConfigError, match="in_channels must be a positive integer, got '1'"):
        create_model("shallow-cnn", in_channels="1")


def test_layer_lookup_on_a_model_without_such_layers() -> None:
    with pytest.raises(ConfigError, match="has no Conv2d layer"):
        last_conv_layer(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ConfigError, match="has no Linear layer"):
        classifier_head(nn.Sequential(nn.Conv2d(1, 1, 1)))


def test_register_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model("tiny", input_size=8, description="test net", family="paper")
    def tiny(num_classes: int, in_channels: int, width: int = 4) -> nn.Module:
        return nn.Sequential(nn.Conv2d(in_channels, width, 3), nn.Flatten(), nn.Linear(width * 36, num_classes))

    assert create_model("tiny", num_classes=3, width=2)[0].out_channels == 2
    with pytest.raises(ConfigError, match="valid options: width"):
        create_model("tiny", depth=2)
    with pytest.raises(ValueError, match="already registered"):
        register_model("tiny", input_size=8, description="again", family="paper")(tiny)
    with pytest.raises(ValueError, match="family"):
        register_model("other", input_size=8, description="", family="timm")  # type: ignore[arg-type]


# -- pretrained: lungscope-cxr (the bundled chest X-ray model's weights) --------------------------------------------

CXR_OPTIONS = {"width": 8, "blocks": (1, 1, 1, 1)}  # a tiny cxr-resnet: 64 features before the head


def tiny_lungscope_cxr(monkeypatch: pytest.MonkeyPatch, folder: Path, *, seed: int = 0) -> dict:
    """Save a tiny cxr-resnet pneumonia checkpoint (64x64, per-image normalised) and make it ``lungscope-cxr``."""
    torch.manual_seed(seed)
    model = create_model("cxr-resnet", **CXR_OPTIONS)
    checkpoint = {"model": model.state_dict(), "classes": ["NORMAL", "PNEUMONIA"], "image_size": 64,
                  "config": {"model": "cxr-resnet", "model_options": CXR_OPTIONS, "normalise": "per-image"}}
    torch.save(checkpoint, folder / "pneumonia.pt")
    monkeypatch.setattr(weights, "LUNGSCOPE_CXR_CHECKPOINT", folder / "pneumonia.pt")
    return checkpoint


def _same(state: dict, reference: dict, keys: list[str]) -> bool:
    return all(torch.equal(state[k], reference[k]) for k in keys)


def test_lungscope_cxr_loads_the_body_and_a_fresh_head_for_other_classes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = tiny_lungscope_cxr(monkeypatch, tmp_path)["model"]
    body = [k for k in saved if not k.startswith("fc.")]
    assert len(body) > 50 and sorted(set(saved) - set(body)) == ["fc.bias", "fc.weight"]

    same = create_model("cxr-resnet", pretrained="lungscope-cxr", classes=["NORMAL", "PNEUMONIA"], **CXR_OPTIONS)
    assert _same(same.state_dict(), saved, list(saved))  # the same classes: the head is kept too

    torch.manual_seed(7)
    untouched = create_model("cxr-resnet", **CXR_OPTIONS).state_dict()
    torch.manual_seed(7)
    tb = create_model("cxr-resnet", pretrained="lungscope-cxr", classes=("NORMAL", "TUBERCULOSIS"), **CXR_OPTIONS)
    state = tb.state_dict()
    assert _same(state, saved, body)
    assert _same(state, untouched, ["fc.weight", "fc.bias"]) and not torch.equal(state["fc.weight"], saved["fc.weight"])

    three = create_model("cxr-resnet", num_classes=3, pretrained="lungscope-cxr", **CXR_OPTIONS).state_dict()
    assert _same(three, saved, body) and three["fc.weight"].shape == (3, 64)


def test_lungscope_cxr_refuses_another_architecture_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny_lungscope_cxr(monkeypatch, tmp_path)
    with pytest.raises(ConfigError) as error:
        create_model("resnet18", pretrained="lungscope-cxr")
    assert str(error.value) == ("pretrained lungscope-cxr is a cxr-resnet network; it cannot start a resnet18 "
                                "(use model: cxr-resnet, or another pretrained)")
    with pytest.raises(ConfigError) as error:
        create_model("cxr-resnet", pretrained="lungscope-cxr", width=16, blocks=(1, 1, 1, 1))
    message = str(error.value)
    assert message.startswith("lungscope-cxr (a cxr-resnet with width 8, blocks (1, 1, 1, 1): ")
    assert " does not fit cxr-resnet: wrong shape features.0.weight (8, 1, 7, 7) != (16, 1, 7, 7)" in message
    assert "\n" not in message
    (tmp_path / "pneumonia.pt").unlink()
    with pytest.raises(ConfigError, match=r"pneumonia\.pt: checkpoint not found$"):
        create_model("cxr-resnet", pretrained="lungscope-cxr", **CXR_OPTIONS)


def test_lungscope_cxr_starts_the_encoder_of_a_cxr_unet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = tiny_lungscope_cxr(monkeypatch, tmp_path)["model"]
    torch.manual_seed(3)
    fresh = create_model("cxr-unet", num_classes=1, **CXR_OPTIONS).state_dict()
    torch.manual_seed(3)
    unet = create_model("cxr-unet", num_classes=1, pretrained="lungscope-cxr", **CXR_OPTIONS)
    state = unet.state_dict()
    encoder = [k for k in saved if k.startswith("features.")]
    assert len(encoder) > 40 and _same(state, saved, encoder)  # every encoder tensor is the classifier's
    decoder = [k for k in state if not k.startswith("features.")]
    assert decoder and _same(state, fresh, decoder)  # the decoder keeps its initialisation
    assert unet(torch.rand(2, 1, 64, 64)).shape == (2, 1, 64, 64)
    with pytest.raises(ValueError, match="multiples of 32"):
        unet(torch.rand(1, 1, 48, 48))
    with pytest.raises(ConfigError) as error:  # another width: one line naming the unfitting keys
        create_model("cxr-unet", num_classes=1, pretrained="lungscope-cxr", width=16, blocks=(1, 1, 1, 1))
    message = str(error.value)
    assert " does not fit cxr-unet's encoder: wrong shape 0.weight (8, 1, 7, 7) != (16, 1, 7, 7)" in message
    assert "\n" not in message
    torch.save({"fc.weight": torch.zeros(2, 64)}, tmp_path / "head-only.pt")
    with pytest.raises(ConfigError, match="does not fit cxr-unet's encoder: missing 0.weight, 1.weight, 1.bias"):
        create_model("cxr-unet", num_classes=1, pretrained=tmp_path / "head-only.pt", **CXR_OPTIONS)


def test_lungscope_cxr_input_must_match_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny_lungscope_cxr(monkeypatch, tmp_path)
    check_pretrained_input("lungscope-cxr", model_name="cxr-resnet", image_size=64, normalise="per-image")
    check_pretrained_input("lungscope-cxr", model_name="cxr-resnet", image_size=96, normalise="per-image")  # larger
    for other in (None, "imagenet", tmp_path / "pneumonia.pt"):  # weights that record no input are not checked
        check_pretrained_input(other, model_name="resnet18", image_size=224, normalise="fixed")
    with pytest.raises(ConfigError, match="lungscope-cxr is a cxr-resnet network; it cannot start a resnet18"):
        check_pretrained_input("lungscope-cxr", model_name="resnet18", image_size=64, normalise="per-image")
    with pytest.raises(ConfigError) as error:
        check_pretrained_input("lungscope-cxr", model_name="cxr-resnet", image_size=32, normalise="fixed")
    assert str(error.value) == ("pretrained lungscope-cxr learnt on 64x64 images normalised per-image; this run has "
                                "image_size 32, normalise fixed: set image_size: 64 (or larger), normalise: per-image")
    with pytest.raises(ConfigError, match="this run has normalise fixed: set normalise: per-image$"):
        check_pretrained_input("lungscope-cxr", model_name="cxr-resnet", image_size=224, normalise="fixed")


def test_lungscope_cxr_is_the_bundled_classifier() -> None:
    bundled = torch.load(weights.LUNGSCOPE_CXR_CHECKPOINT, weights_only=True)
    assert weights.LUNGSCOPE_CXR_CHECKPOINT.parent.name == "bundled"
    found = weights.lungscope_cxr()
    assert (found.model, found.classes, found.image_size) == (
        bundled["config"]["model"], tuple(bundled["classes"]), bundled["image_size"])
    model = create_model(found.model, pretrained="lungscope-cxr", classes=found.classes,
                         **bundled["config"].get("model_options", {}))
    assert _same(model.state_dict(), bundled["model"], list(bundled["model"]))


def test_fine_tuning_from_lungscope_cxr_in_two_stages_with_a_faster_head(
    lung_masks: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = tiny_lungscope_cxr(monkeypatch, tmp_path)["model"]
    options = {"data": str(lung_masks / "images"), "labels": "tb", "model": "cxr-resnet",
               "model_options": CXR_OPTIONS, "pretrained": "lungscope-cxr", "image_size": 64,
               "normalise": "per-image", "limit": 60, "batch_size": 16, "scheduler": "none", "freeze_epochs": 1,
               "head_lr_factor": 10.0, "lr": 0.002, "threads": 1}
    body = [name for name, _ in create_model("cxr-resnet", **CXR_OPTIONS).named_parameters()
            if not name.startswith("fc.")]
    train(TrainConfig(out=str(tmp_path / "two"), epochs=2, **options), progress=False)
    assert pd.read_csv(tmp_path / "two" / "metrics.csv")["lr"].tolist() == pytest.approx([2e-3, 2e-4])
    groups = torch.load(tmp_path / "two" / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == pytest.approx([2e-4, 2e-3])  # stage two: body lr / 10, head x 10
    assert [len(g["params"]) for g in groups] == [len(body), 2]

    train(TrainConfig(out=str(tmp_path / "one"), epochs=1, **options), progress=False)
    state = torch.load(tmp_path / "one" / "last.pt", weights_only=True)["model"]
    assert _same(state, saved, body)  # stage one trains the head alone: every body weight is lungscope-cxr's
    assert not torch.equal(state["fc.weight"], saved["fc.weight"])

    with pytest.raises(ConfigError, match="set image_size: 64 \\(or larger\\)"):
        train(TrainConfig(out=str(tmp_path / "bad"), **{**options, "image_size": 32}), progress=False)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ConfigError, match="head_lr_factor must be positive, not 0"):
        TrainConfig(head_lr_factor=0)
