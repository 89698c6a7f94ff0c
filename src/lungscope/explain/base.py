"""The explanation methods: a small :class:`Explainer` per method, each wrapping its Captum class.

Every explainer turns a batch ``(N, C, H, W)`` of model inputs and one target class per image into maps ``(N, H, W)``
at the input's resolution with their signs kept (positive: evidence for the target). Input-level attributions of a
multi-channel input (the grey image repeated for an ImageNet backbone) are summed over channels: by the chain rule
that sum is the attribution of the grey pixel the channels were copied from.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from captum._utils.common import _register_backward_hook
from captum.attr import (
    Deconvolution,
    GuidedBackprop,
    GuidedGradCam,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    Occlusion,
)
from torch import nn

from lungscope.errors import ConfigError
from lungscope.models import gradcam_layer

BASELINE = 0.0  # IG, occlusion and deletion baseline: 0 after normalisation is the mean grey (as Petsiuk et al.)


@dataclass(frozen=True)
class Explanation:
    """Maps of a batch of images and what they explain.

    ``maps``: ``(N, H, W)`` float32 at the model input's resolution, signed: they explain the target's logit (the
    score before softmax or sigmoid), as Grad-CAM prescribes. ``layer``: the layer explained
    (Grad-CAM, Guided Grad-CAM), None for input-level methods. ``targets``: the class index explained per image
    (0 = the single logit of a sigmoid head). ``scores``: the model's probability of that class (softmax, or the
    sigmoid of a single logit).
    """

    maps: np.ndarray
    method: str
    layer: str | None
    targets: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.maps)


def resolve_layer(model: nn.Module, layer: str | None) -> tuple[str, nn.Module]:
    """``(name, module)`` of the layer named as in ``named_modules``; None: Grad-CAM's default layer
    (:func:`~lungscope.models.gradcam_layer`)."""
    if layer is None:
        return gradcam_layer(model)
    try:
        return layer, model.get_submodule(layer)
    except AttributeError:
        convolutions = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
        raise ConfigError(
            f"{type(model).__name__} has no layer {layer!r}; its convolutions are: {', '.join(convolutions)}"
        ) from None


@contextmanager
def explaining(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode, gradients on, every in-place activation made out-of-place; all restored on exit.

    In-place activations (the ReLUs of torchvision's VGG, AlexNet and ResNet) overwrite the tensor a Captum hook
    captured: a convolution feeding ``ReLU(inplace=True)`` would report its rectified output, and autograd refuses
    to differentiate through a hooked tensor modified in place. Flags are flipped and restored, not copied: no
    second copy of the weights. Captum's notice that it hooks the ReLUs is silenced.
    """
    modes = {module: module.training for module in model.modules()}
    inplace = [module for module in model.modules() if getattr(module, "inplace", False) is True]
    model.eval()
    for module in inplace:
        module.inplace = False  # type: ignore[assignment]  # a bool flag, not a submodule
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            # Captum announces on every call that it hooks the ReLUs and removes the hooks after: noise to a user.
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU", category=UserWarning)
            yield model
    finally:
        for module in inplace:
            module.inplace = True  # type: ignore[assignment]  # a bool flag, not a submodule
        for module, training in modes.items():
            module.training = training


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities ``(N, K)``: softmax, or for a single logit the sigmoid (K = 1)."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def resolve_targets(target: int | torch.Tensor | np.ndarray | list[int] | None, logits: torch.Tensor) -> torch.Tensor:
    """One class index per image: None is the predicted class (softmax) or the logit itself (single logit)."""
    n, k = logits.shape
    if target is None:
        return torch.zeros(n, dtype=torch.long, device=logits.device) if k == 1 else logits.argmax(dim=1)
    targets = torch.as_tensor(target, dtype=torch.long, device=logits.device).flatten()
    if targets.numel() == 1:
        targets = targets.expand(n)
    if targets.numel() != n:
        raise ConfigError(f"got {targets.numel()} targets for {n} images")
    if targets.min() < 0 or targets.max() >= k:
        raise ConfigError(f"target classes must be in 0..{k - 1} for a model with {k} output(s), got {target!r}")
    return targets


class Explainer:
    """One method: ``attribute(inputs, targets) -> (N, H, W)`` maps. Subclasses set ``name`` (and ``uses_layer``)."""

    name: ClassVar[str]
    uses_layer: ClassVar[bool] = False

    def __init__(self, model: nn.Module, layer: str | None = None) -> None:
        self.model = model
        if not self.uses_layer and layer is not None:
            raise ConfigError(f"method {self.name} explains the input, not a layer: drop the layer {layer!r}")
        self.layer_name: str | None
        self.layer: nn.Module | None
        self.layer_name, self.layer = resolve_layer(model, layer) if self.uses_layer else (None, None)

    def attribute(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class GradCamExplainer(Explainer):
    """Grad-CAM (Selvaraju et al. 2017) upsampled bilinearly to the input's size; signed unless ``relu``.

    ``relu=True`` is the paper's map (and pytorch-grad-cam's): the ReLU applied on the layer's grid, before
    upsampling. The positive view of the signed map ReLUs after upsampling instead, which differs where positive
    cells are isolated among negative ones on a fine grid (interpolation blends them away).
    """

    name = "gradcam"
    uses_layer = True

    def __init__(self, model: nn.Module, layer: str | None = None, relu: bool = False) -> None:
        super().__init__(model, layer)
        self.relu = relu

    def attribute(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        cam = LayerGradCam(self.model, self.layer).attribute(inputs, target=targets, relu_attributions=self.relu)
        return LayerAttribution.interpolate(cam, tuple(inputs.shape[-2:]), interpolate_mode="bilinear")[:, 0]


RECTIFIERS = (nn.ReLU, nn.LeakyReLU, nn.PReLU)


class _RectifierHooks:
    """Captum's Guided Backprop and Deconvolution override the backward pass of ``nn.ReLU`` modules only, so a
    network of LeakyReLUs (three-block-cnn) or PReLUs would silently get plain gradients. The same rule (keep
    positive gradients) is applied here to every rectifier module; functional ReLUs (DenseNet) stay unguided."""

    def _register_hooks(self, module: nn.Module) -> None:
        if isinstance(module, RECTIFIERS):
            # backward_hooks and _backward_hook come from Captum's class that this mixin precedes
            self.backward_hooks.extend(_register_backward_hook(module, self._backward_hook, self))  # type: ignore[attr-defined]


class _GuidedBackprop(_RectifierHooks, GuidedBackprop):
    pass


class _Deconvolution(_RectifierHooks, Deconvolution):
    pass


class GuidedBackpropExplainer(Explainer):
    """Guided Backpropagation (Springenberg et al. 2015), guiding every rectifier module."""

    name = "guided-backprop"

    def attribute(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return _GuidedBackprop(self.model).attribute(inputs, target=targets).sum(dim=1)


class DeconvolutionExplainer(Explainer):
    """Deconvolution (Zeiler & Fergus 2014), through every rectifier module."""

    name = "deconvolution"

    def attribute(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return _Deconvolution(self.model).attribute(inputs, target=targets).sum(dim=1)


class GuidedGradCamExplainer(Explainer):
    """Guided Grad-CAM: Guided Backprop times the (ReLU'd, bilinearly upsampled) Grad-CAM of the layer."""

    name = "guided-gradcam"
    uses_layer = True

    def attribute(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        explainer = GuidedGradCam(self.model, self.layer)
        explainer.guided_backprop = _GuidedBackprop(self.model)  # guide LeakyReLU/PReLU too (see _RectifierHooks)
        return explainer.attribute(inputs, target=targets, interpolate_mode="bilinear").sum(dim=1)


class IntegratedGradientsExplainer(Explainer):
    """Integrated Gradients (Sundararajan et al. 2017) from the mean-grey baseline, ``steps`` Gauss-Legendre points."""

    name = "integrated-gradients"

    def __init__(self, model: nn.Module, layer: str | None = None, steps: int = 32, internal_batch_size: int = 64):
        super().__init__(model, layer)
        self.steps = steps
        self.internal_batch_size = internal_batch_size

    def attribute(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        attributions = IntegratedGradients(self.model).attribute(
            inputs, baselines=BASELINE, target=targets, n_steps=self.steps, internal_batch_size=self.internal_batch_size
        )
        return attributions.sum(dim=1)


class OcclusionExplainer(Explainer):
    """Occlusion (Zeiler & Fergus 2014): the score lost when a square patch is set to the mean grey.

    ``window`` defaults to 1/8 of the input's side and ``stride`` to half the window (225 positions).
    """

    name = "occlusion"

    def __init__(self, model: nn.Module, layer: str | None = None, window: int | None = None,
                 stride: int | None = None, perturbations_per_eval: int = 32):
        super().__init__(model, layer)
        self.window, self.stride = window, stride
        self.perturbations_per_eval = perturbations_per_eval

    def attribute(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        channels, side = inputs.shape[1], min(inputs.shape[-2:])
        window = self.window or max(1, side // 8)
        stride = self.stride or max(1, window // 2)
        attributions = Occlusion(self.model).attribute(
            inputs,
            sliding_window_shapes=(channels, window, window),
            strides=(channels, stride, stride),
            baselines=BASELINE,
            target=targets,
            perturbations_per_eval=self.perturbations_per_eval,
        )
        return attributions.sum(dim=1)


METHODS: dict[str, type[Explainer]] = {
    cls.name: cls
    for cls in (
        GradCamExplainer,
        GuidedBackpropExplainer,
        GuidedGradCamExplainer,
        DeconvolutionExplainer,
        IntegratedGradientsExplainer,
        OcclusionExplainer,
    )
}


def get_method(method: str) -> type[Explainer]:
    """The explainer class of a method name; :class:`ConfigError` listing the methods otherwise."""
    try:
        return METHODS[method]
    except KeyError:
        raise ConfigError(f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}") from None


def make_explainer(model: nn.Module, method: str, layer: str | None = None, **options: Any) -> Explainer:
    """The explainer of ``method`` for ``model``; ``options`` go to its constructor (e.g. ``steps``, ``window``)."""
    cls = get_method(method)
    known = [name for name in inspect.signature(cls.__init__).parameters if name not in ("self", "model", "layer")]
    unknown = sorted(set(options) - set(known))
    if unknown:
        valid = ", ".join(known) or "none"
        raise ConfigError(f"unknown option {', '.join(unknown)} for method {method}; valid: {valid}")
    return cls(model, layer, **options)
