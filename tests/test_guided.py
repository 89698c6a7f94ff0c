"""Guided Backprop, Deconvolution and Guided Grad-CAM on public APIs only: equal to Captum's own classes where those
apply (networks whose rectifiers are all ``nn.ReLU``), every rectifier rewritten where Captum's would leave LeakyReLU
and PReLU unguided, hooks and in-place flags restored after every call, and no import of Captum's private modules.

Tolerances, measured (largest absolute difference over the reference's largest absolute value): ours against
Captum's GuidedBackprop and Deconvolution, 0 (bitwise equal) on the bundled cxr-resnet, a random ResNet-18 and a random
shallow-cnn; Guided Grad-CAM 8e-8 (it multiplies after the channel sum). Dropping the rule from a single rectifier,
the smallest of these networks' gaps is 2.4e-2 (Guided Backprop, one ReLU of cxr-resnet's last stage); plain
gradients are 0.97 to 30 away. ``TOLERANCE`` sits between: 1e-5.
"""

from __future__ import annotations

import ast
import copy
import inspect
import warnings
from pathlib import Path

import pytest
import torch
from captum.attr import Deconvolution, GuidedBackprop, GuidedGradCam, Saliency
from torch import nn

import lungscope
from lungscope.data.io import read_image
from lungscope.errors import ConfigError
from lungscope.explain import explain
from lungscope.explain.base import (
    METHODS,
    RECTIFIERS,
    DeconvolutionExplainer,
    Explainer,
    GuidedBackpropExplainer,
    GuidedGradCamExplainer,
    InputExplainer,
    explaining,
    rectifiers_rewritten,
)
from lungscope.inference import Classifier
from lungscope.models import create_model

TOLERANCE = 1e-5  # of the reference's largest value; see the module's docstring for the measured gaps
WRONG = 1e-2  # a map this far from the reference is another method (plain gradients: >= 0.3 here)
SAMPLES = Path(__file__).resolve().parents[1] / "samples"
CAPTUM = {"guided-backprop": GuidedBackprop, "deconvolution": Deconvolution}
EXPLAINERS: dict[str, type[Explainer]] = {"guided-backprop": GuidedBackpropExplainer,
                                          "deconvolution": DeconvolutionExplainer,
                                          "guided-gradcam": GuidedGradCamExplainer}
RULES = {"guided-backprop": "guided-backprop", "deconvolution": "deconvolution", "guided-gradcam": "guided-backprop"}


def _gap(mine: torch.Tensor, reference: torch.Tensor) -> float:
    return float((mine - reference).abs().max() / reference.abs().max())


def _relu_network(name: str) -> tuple[nn.Module, torch.Tensor]:
    """A network whose rectifiers are all nn.ReLU, and inputs for it: the bundled cxr-resnet on the sample X-rays
    (trained; its ReLUs in-place and each BasicBlock's called twice), or random ResNet-18 and shallow-cnn."""
    torch.manual_seed(0)
    if name == "bundled":
        classifier = Classifier.load("default")
        images = [classifier.transform(read_image(p).pixels) for p in sorted(SAMPLES.rglob("*.jpeg"))[:3]]
        model, inputs = classifier.model, torch.stack(images)
    elif name == "resnet18":
        model, inputs = create_model("resnet18", num_classes=2, in_channels=3), torch.randn(2, 3, 96, 96)
    else:
        model, inputs = create_model("shallow-cnn"), torch.randn(3, 1, 64, 64)
    rectifiers = [module for module in model.modules() if isinstance(module, RECTIFIERS)]
    assert rectifiers and all(type(module) is nn.ReLU for module in rectifiers)
    return model.eval(), inputs


def _plain_gradient(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return Saliency(model).attribute(inputs.clone().requires_grad_(), target=targets, abs=False).sum(dim=1).detach()


@pytest.fixture(scope="module", params=["bundled", "resnet18", "shallow-cnn"])
def relu_network(request: pytest.FixtureRequest) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model, inputs = _relu_network(request.param)
    with torch.no_grad():
        targets = model(inputs).argmax(dim=1)
    return model, inputs, targets


@pytest.mark.parametrize("method", ["guided-backprop", "deconvolution"])
def test_equal_to_captums_class_on_a_relu_network(
    relu_network: tuple[nn.Module, torch.Tensor, torch.Tensor], method: str
) -> None:
    model, inputs, targets = relu_network
    mine = torch.as_tensor(explain(model, inputs, method, targets, warn=False).maps)
    with explaining(model), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Captum's notice that it hooks the ReLUs
        reference = CAPTUM[method](model).attribute(inputs.clone().requires_grad_(), target=targets).sum(dim=1).detach()
        plain = _plain_gradient(model, inputs, targets)
    assert _gap(mine, reference) <= TOLERANCE
    assert _gap(plain, reference) > WRONG  # the comparison would catch a method that dropped the rule


def test_guided_gradcam_equal_to_captums_on_a_relu_network(
    relu_network: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, inputs, targets = relu_network
    ours = explain(model, inputs, "guided-gradcam", targets, warn=False)
    layer = model.get_submodule(ours.layer)
    with explaining(model), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        reference = GuidedGradCam(model, layer).attribute(
            inputs.clone().requires_grad_(), target=targets, interpolate_mode="bilinear"
        ).sum(dim=1).detach()
        cam = torch.as_tensor(explain(model, inputs, "gradcam", targets, relu=True).maps)
        unguided = _plain_gradient(model, inputs, targets) * cam
    assert _gap(torch.as_tensor(ours.maps), reference) <= TOLERANCE
    assert _gap(unguided, reference) > WRONG


class _ReferenceRectifier(nn.Module):
    """LeakyReLU / PReLU written as its own autograd function whose backward follows the rule: an implementation of
    the methods independent of module hooks."""

    def __init__(self, slope: torch.Tensor, rule: str) -> None:
        super().__init__()
        self.slope, self.rule = slope.detach(), rule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slope = self.slope.reshape(1, -1, *[1] * (x.ndim - 2)) if self.slope.numel() > 1 else self.slope
        return _RuleFunction.apply(x, slope, self.rule)


class _RuleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, slope: torch.Tensor,
                rule: str) -> torch.Tensor:
        ctx.save_for_backward(x, slope)
        ctx.rule = rule  # type: ignore[attr-defined]
        return torch.where(x > 0, x, slope * x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        x, slope = ctx.saved_tensors  # type: ignore[attr-defined]
        if ctx.rule == "deconvolution":  # type: ignore[attr-defined]
            return torch.relu(grad), None, None
        return torch.relu(grad * torch.where(x > 0, torch.ones_like(x), slope)), None, None


def _with_reference_rectifiers(model: nn.Module, rule: str) -> nn.Module:
    copied = copy.deepcopy(model)
    for name, module in list(copied.named_modules()):
        if isinstance(module, nn.LeakyReLU):
            copied.set_submodule(name, _ReferenceRectifier(torch.tensor(module.negative_slope), rule))
        elif isinstance(module, nn.PReLU):
            copied.set_submodule(name, _ReferenceRectifier(module.weight, rule))
    assert not any(isinstance(module, RECTIFIERS) for module in copied.modules())
    return copied


@pytest.mark.parametrize("method", ["guided-backprop", "deconvolution"])
@pytest.mark.parametrize(("network", "options", "kind"), [
    ("three-block-cnn", {}, nn.LeakyReLU),
    ("five-block-cnn", {"activation": "prelu"}, nn.PReLU),
])
def test_every_rectifier_is_rewritten(network: str, options: dict[str, str], kind: type[nn.Module],
                                      method: str) -> None:
    """On LeakyReLU and PReLU networks Captum's classes (nn.ReLU only) give plain gradients; ours follow the rule
    at every rectifier, as the reference autograd functions do."""
    torch.manual_seed(0)
    model = create_model(network, **options).eval()
    with torch.no_grad():  # PReLU's learnt slopes differ per channel
        for module in model.modules():
            if isinstance(module, nn.PReLU):
                module.weight.uniform_(0.05, 0.5)
    assert any(isinstance(module, kind) for module in model.modules())
    assert not any(type(module) is nn.ReLU for module in model.modules())
    size = 128 if network == "three-block-cnn" else 150
    inputs, targets = torch.randn(2, 1, size, size), torch.tensor([0, 1])
    mine = torch.as_tensor(explain(model, inputs, method, targets, warn=False).maps)
    with explaining(model), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        reference = _plain_gradient(_with_reference_rectifiers(model, method), inputs, targets)
        plain = _plain_gradient(model, inputs, targets)
        captum = CAPTUM[method](model).attribute(inputs.clone().requires_grad_(), target=targets).sum(dim=1).detach()
    assert _gap(mine, reference) <= TOLERANCE
    assert _gap(plain, reference) > WRONG and _gap(captum, reference) > WRONG
    assert _gap(captum, plain) <= TOLERANCE  # what Captum's class alone would have shown


def _hooks_and_flags(model: nn.Module) -> tuple[list[int], list[bool]]:
    hooks = [len(getattr(module, kind)) for module in model.modules() for kind in
             ("_backward_hooks", "_backward_pre_hooks", "_forward_hooks", "_forward_pre_hooks")]
    return hooks, [module.inplace for module in model.modules() if hasattr(module, "inplace")]


@pytest.mark.parametrize("method", ["guided-backprop", "deconvolution", "guided-gradcam"])
def test_hooks_and_inplace_flags_are_restored_after_a_call_and_after_an_error(method: str) -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=2, in_channels=3).eval()
    hooks, flags = _hooks_and_flags(model)
    assert not any(hooks) and any(flags)  # torchvision's ReLUs are in-place
    inputs = torch.randn(2, 3, 64, 64)
    plain = _plain_gradient(model, inputs, torch.tensor([0, 1]))
    explain(model, inputs, method, [0, 1], warn=False)
    assert _hooks_and_flags(model) == (hooks, flags)
    with pytest.raises(RuntimeError, match="channels"):  # the forward pass fails inside the hooked call
        EXPLAINERS[method](model).attribute(torch.randn(1, 1, 64, 64), torch.tensor([0]))
    assert _hooks_and_flags(model) == (hooks, flags)
    with pytest.raises(KeyError), rectifiers_rewritten(model, RULES[method]) as rectifiers:
        assert len(rectifiers) == 9 and not any(module.inplace for module in rectifiers)  # stem + one per block
        assert all(len(module._backward_hooks) == 1 for module in rectifiers)
        raise KeyError("inside")
    assert _hooks_and_flags(model) == (hooks, flags)
    # the model's own gradient is back: nothing of the rule survives the calls
    torch.testing.assert_close(_plain_gradient(model, inputs, torch.tensor([0, 1])), plain, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="unknown rectifier rule"), rectifiers_rewritten(model, "lrp"):
        pass


def test_no_module_imports_captums_private_modules() -> None:
    """Captum's underscore modules and names are not its API: a release may move them without a failing import."""
    private, public = [], []
    for path in sorted(Path(lungscope.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for module in modules:
                parts = module.split(".")
                if parts[0] == "captum":
                    is_private = any(part.startswith("_") for part in parts[1:])
                    (private if is_private else public).append(f"{path.relative_to(path.parents[2])}:{node.lineno}")
    assert not private, private
    assert any(name.startswith("lungscope/explain/base.py") for name in public)  # the scan sees Captum imports


def test_attribute_is_abstract_and_every_input_method_shares_the_channel_sum() -> None:
    model = create_model("shallow-cnn").eval()
    with pytest.raises(TypeError, match="abstract"):
        Explainer(model)  # type: ignore[abstract]
    for name, cls in METHODS.items():
        assert cls.uses_layer or issubclass(cls, InputExplainer), name
        assert "attribute" not in vars(cls) or not issubclass(cls, InputExplainer), name  # no second channel sum
    source = Path(inspect.getfile(Explainer)).read_text()
    assert source.count(".sum(dim=1)") == 1
