"""Finding the layers other code needs by role: first and last convolution, Grad-CAM's layer, classifier head;
counting parameters."""

from __future__ import annotations

from typing import TypeVar

from torch import nn

from lungscope.errors import ConfigError

LayerT = TypeVar("LayerT", bound=nn.Module)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not; a shared tensor counts once)."""
    return sum(p.numel() for p in model.parameters())


def _layers(model: nn.Module, kind: type[LayerT]) -> list[tuple[str, LayerT]]:
    """``(name, module)`` of every ``kind`` layer in ``named_modules`` (registration) order."""
    found = [(name, module) for name, module in model.named_modules() if isinstance(module, kind)]
    if not found:
        raise ConfigError(f"{type(model).__name__} has no {kind.__name__} layer")
    return found


def first_conv_layer(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """Name and module of the first ``nn.Conv2d``: the layer that sees the input channels."""
    return _layers(model, nn.Conv2d)[0]


def last_conv_layer(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """Name (as in ``named_modules``) and module of the last ``nn.Conv2d``: Grad-CAM's default target layer."""
    return _layers(model, nn.Conv2d)[-1]


def gradcam_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """Name and module of Grad-CAM's default target layer: the one a network names in its ``gradcam_layer``
    attribute (the rectified maps its head pools, as cxr-resnet's), looked up in every submodule (a two-stage
    model's backbone), else the last ``nn.Conv2d``."""
    for prefix, module in model.named_modules():
        name = getattr(module, "gradcam_layer", None)
        if isinstance(name, str):
            full = f"{prefix}.{name}" if prefix else name
            return full, model.get_submodule(full)
    return last_conv_layer(model)


def named_classifier_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """Name and module of the classifier head: the last ``nn.Linear``, whose outputs are the logits."""
    return _layers(model, nn.Linear)[-1]


def classifier_head(model: nn.Module) -> nn.Linear:
    """The task-specific last layer (sized by ``num_classes``): what stage 1 of two-stage fine-tuning trains.

    In every registry model it is the last ``nn.Linear``; the layers before it are the (possibly pretrained) body.
    """
    return named_classifier_head(model)[1]
