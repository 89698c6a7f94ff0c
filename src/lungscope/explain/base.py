"""The explanation methods: a small :class:`Explainer` per method, on Captum's public classes.

Every explainer turns a batch ``(N, C, H, W)`` of model inputs and one target class per image into maps ``(N, H, W)``
at the input's resolution with their signs kept (positive: evidence for the target). Input-level attributions of a
multi-channel input (the grey image repeated for an ImageNet backbone) are summed over channels
(:class:`InputExplainer`): by the chain rule that sum is the attribution of the grey pixel the channels were copied
from.

Guided Backprop and Deconvolution rewrite the backward pass of every rectifier module (``nn.ReLU``, ``nn.LeakyReLU``,
``nn.PReLU``; Captum's own classes rewrite ``nn.ReLU`` only) with PyTorch's public full backward hooks
(:func:`rectifiers_rewritten`), then take the input gradient with Captum's ``Saliency``.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from captum.attr import (
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    Occlusion,
    Saliency,
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
    second copy of the weights.
    """
    modes = {module: module.training for module in model.modules()}
    inplace = [module for module in model.modules() if getattr(module, "inplace", False) is True]
    model.eval()
    for module in inplace:
        module.inplace = False  # type: ignore[assignment]  # a bool flag, not a submodule
    try:
        with torch.enable_grad():
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


class Explainer(ABC):
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

    @abstractmethod
    def attribute(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Maps ``(N, H, W)`` of ``inputs`` ``(N, C, H, W)``, explaining class ``targets[i]`` of image ``i``."""


class InputExplainer(Explainer):
    """A method attributing to the input's values: :meth:`input_attributions` ``(N, C, H, W)``, summed over the
    channels (the attribution of the grey pixel a multi-channel input repeats; see the module's docstring)."""

    def attribute(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.input_attributions(inputs, targets).sum(dim=1)

    @abstractmethod
    def input_attributions(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Attributions ``(N, C, H, W)``, one per input value."""


def gradcam(model: nn.Module, layer: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
            relu: bool = False) -> torch.Tensor:
    """Grad-CAM of ``layer`` ``(N, H, W)``, upsampled bilinearly to the input's size; ReLU'd on the layer's grid if
    ``relu``."""
    cam = LayerGradCam(model, layer).attribute(inputs, target=targets, relu_attributions=relu)
    return LayerAttribution.interpolate(cam, tuple(inputs.shape[-2:]), interpolate_mode="bilinear")[:, 0]


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
        assert self.layer is not None  # uses_layer
        return gradcam(self.model, self.layer, inputs, targets, relu=self.relu)


RECTIFIERS = (nn.ReLU, nn.LeakyReLU, nn.PReLU)

BackwardHook = Callable[[nn.Module, tuple[torch.Tensor | None, ...], tuple[torch.Tensor | None, ...]],
                        tuple[torch.Tensor, ...] | None]


def _guided_backward(module: nn.Module, grad_input: tuple[torch.Tensor | None, ...],
                     grad_output: tuple[torch.Tensor | None, ...]) -> tuple[torch.Tensor, ...] | None:
    """Guided Backprop: the rectifier's own backward (ReLU: 0 below 0; LeakyReLU, PReLU: the slope), then only the
    positive gradients pass."""
    (grad,) = grad_input
    return None if grad is None else (torch.relu(grad),)


def _deconvolution_backward(module: nn.Module, grad_input: tuple[torch.Tensor | None, ...],
                            grad_output: tuple[torch.Tensor | None, ...]) -> tuple[torch.Tensor, ...] | None:
    """Deconvolution: the rectifier's backward replaced by a ReLU of the incoming gradient (its input ignored)."""
    (grad,), (incoming,) = grad_input, grad_output
    return None if grad is None or incoming is None else (torch.relu(incoming),)


BACKWARD_RULES: dict[str, BackwardHook] = {
    "guided-backprop": _guided_backward,
    "deconvolution": _deconvolution_backward,
}


@contextmanager
def rectifiers_rewritten(model: nn.Module, rule: str) -> Iterator[list[nn.Module]]:
    """For the duration, the backward pass of every rectifier module of ``model`` (:data:`RECTIFIERS`) follows
    ``rule`` (:data:`BACKWARD_RULES`); yields the rectifiers. Functional ReLUs (DenseNet's) are not modules: they
    keep their plain gradient.

    Public API only: a ``register_full_backward_hook`` per rectifier, all removed on exit, even on error. Such a hook
    sees the gradient of a module's own input (a tensor read elsewhere too is rewritten on this path only) and is
    called only when that input needs a gradient, as every rectifier between the input and the output does when the
    input requires grad. In-place rectifiers are made out-of-place for the duration (a hooked module's input must not
    be overwritten) and restored.
    """
    try:
        hook = BACKWARD_RULES[rule]
    except KeyError:
        raise ConfigError(f"unknown rectifier rule {rule!r}; choose one of {', '.join(BACKWARD_RULES)}") from None
    rectifiers: list[nn.Module] = [module for module in model.modules() if isinstance(module, RECTIFIERS)]
    inplace = [module for module in rectifiers if getattr(module, "inplace", False) is True]
    handles = []
    try:
        for module in inplace:
            module.inplace = False  # type: ignore[assignment]  # a bool flag, not a submodule
        for module in rectifiers:
            handles.append(module.register_full_backward_hook(hook))
        yield rectifiers
    finally:
        for handle in handles:
            handle.remove()
        for module in inplace:
            module.inplace = True  # type: ignore[assignment]  # a bool flag, not a submodule


def rewritten_gradient(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, rule: str) -> torch.Tensor:
    """The gradient ``(N, C, H, W)`` of each image's target logit with respect to its input, through rectifiers
    rewritten by ``rule`` (Captum's public ``Saliency``, signed). Inputs that do not require grad are differentiated
    through a detached copy that does (Captum would flip the caller's flag for the call, with a warning)."""
    if not inputs.requires_grad:
        inputs = inputs.detach().requires_grad_()
    with torch.enable_grad(), rectifiers_rewritten(model, rule):
        return Saliency(model).attribute(inputs, target=targets, abs=False)


class GuidedBackpropExplainer(InputExplainer):
    """Guided Backpropagation (Springenberg et al. 2015), guiding every rectifier module."""

    name = "guided-backprop"

    def input_attributions(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return rewritten_gradient(self.model, inputs, targets, "guided-backprop")


class DeconvolutionExplainer(InputExplainer):
    """Deconvolution (Zeiler & Fergus 2014), through every rectifier module."""

    name = "deconvolution"

    def input_attributions(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return rewritten_gradient(self.model, inputs, targets, "deconvolution")


class GuidedGradCamExplainer(Explainer):
    """Guided Grad-CAM (Selvaraju et al. 2017): Guided Backprop (every rectifier guided) times the ReLU'd, bilinearly
    upsampled Grad-CAM of the layer. The Grad-CAM map is one per pixel, so multiplying after the channel sum is the
    same as before it."""

    name = "guided-gradcam"
    uses_layer = True

    def attribute(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        assert self.layer is not None  # uses_layer
        cam = gradcam(self.model, self.layer, inputs, targets, relu=True)
        return GuidedBackpropExplainer(self.model).attribute(inputs, targets) * cam


class IntegratedGradientsExplainer(InputExplainer):
    """Integrated Gradients (Sundararajan et al. 2017) from the mean-grey baseline, ``steps`` Gauss-Legendre points."""

    name = "integrated-gradients"

    def __init__(self, model: nn.Module, layer: str | None = None, steps: int = 32, internal_batch_size: int = 64):
        super().__init__(model, layer)
        self.steps = steps
        self.internal_batch_size = internal_batch_size

    def input_attributions(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return IntegratedGradients(self.model).attribute(
            inputs, baselines=BASELINE, target=targets, n_steps=self.steps, internal_batch_size=self.internal_batch_size
        )


class OcclusionExplainer(InputExplainer):
    """Occlusion (Zeiler & Fergus 2014): the score lost when a square patch is set to the mean grey.

    ``window`` defaults to 1/8 of the input's side and ``stride`` to half the window (225 positions).
    """

    name = "occlusion"

    def __init__(self, model: nn.Module, layer: str | None = None, window: int | None = None,
                 stride: int | None = None, perturbations_per_eval: int = 32):
        super().__init__(model, layer)
        self.window, self.stride = window, stride
        self.perturbations_per_eval = perturbations_per_eval

    def input_attributions(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        channels, side = inputs.shape[1], min(inputs.shape[-2:])
        window = self.window or max(1, side // 8)
        stride = self.stride or max(1, window // 2)
        return Occlusion(self.model).attribute(
            inputs,
            sliding_window_shapes=(channels, window, window),
            strides=(channels, stride, stride),
            baselines=BASELINE,
            target=targets,
            perturbations_per_eval=self.perturbations_per_eval,
        )


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
DEFAULT_METHOD = GradCamExplainer.name


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
