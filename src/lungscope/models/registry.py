"""The model registry: networks register a builder under a name; ``create_model`` builds one by name."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from lungscope.errors import ConfigError
from lungscope.models.layers import count_parameters
from lungscope.models.weights import (
    LUNGSCOPE_CXR,
    imagenet_state_dict,
    load_encoder,
    load_weights,
    lungscope_cxr,
    read_state_dict,
)

Family = Literal["paper", "torchvision", "composite", "segmentation"]
FAMILIES: tuple[str, ...] = ("paper", "torchvision", "composite", "segmentation")
# Set by create_model, never options: a builder that declares input_size is told the side it is laid out for.
_RESERVED = frozenset({"num_classes", "in_channels", "input_size"})


@dataclass(frozen=True)
class ModelSpec:
    """A registered network: ``builder(num_classes=, in_channels=[, input_size=], **options) -> nn.Module``."""

    name: str
    input_size: int  # square side the net expects
    description: str
    builder: Callable[..., nn.Module]
    family: str  # "paper", "torchvision", "composite" (built of other registry models) or "segmentation"
    encoder_of: str | None = None  # a classifier whose ``features`` are this net's encoder: its weights start it
    ensemble_of: str | None = None  # the network whose separately trained copies (members) this net joins

    @property
    def options(self) -> list[str]:
        """Names of the keyword options ``create_model`` accepts for this network."""
        return [p for p in inspect.signature(self.builder).parameters if p not in _RESERVED]

    def parameter_count(self, num_classes: int | None = None, in_channels: int = 1) -> int:
        """Parameters of the net built with these settings (built on the meta device: no weights are allocated);
        ``num_classes`` defaults to 2 classes, or 1 mask channel for a segmentation net."""
        if num_classes is None:
            num_classes = 1 if self.family == "segmentation" else 2
        with torch.device("meta"):
            return count_parameters(create_model(self.name, num_classes, in_channels))


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str, *, input_size: int, description: str, family: Family, encoder_of: str | None = None,
    ensemble_of: str | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a builder under ``name``; returns the builder unchanged. ``encoder_of``: the registry
    name of a classifier whose ``features`` module the network has under the same name (pretrained weights of that
    classifier then start the encoder, see :func:`create_model`). ``ensemble_of``: the registry name of the network
    this one joins trained copies of (its ``members`` option counts them); the trainer trains each copy from its own
    seed, then joins them."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelSpec(name, input_size, description, builder, family, encoder_of, ensemble_of)
        return builder

    return decorate


def list_models() -> list[ModelSpec]:
    """Every registered network: paper CNNs, torchvision backbones, then composite models, in registration order."""
    return sorted(_REGISTRY.values(), key=lambda spec: FAMILIES.index(spec.family))


def get_spec(name: str) -> ModelSpec:
    """The spec registered under ``name``; :class:`ConfigError` listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(_REGISTRY)}") from None


def _positive_int(label: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{label} must be a positive integer, got {value!r}")
    return value


def create_model(
    name: str,
    num_classes: int = 2,
    in_channels: int = 1,
    pretrained: str | os.PathLike[str] | None = None,
    classes: Sequence[str] | None = None,
    **options: Any,
) -> nn.Module:
    """Build the network ``name`` giving logits of shape ``(N, num_classes)`` (1 for a single sigmoid logit).

    ``pretrained``: ``None`` (random init), ``"imagenet"`` (torchvision backbones only), ``"lungscope-cxr"`` (the
    bundled chest X-ray classifier, for its own architecture only; its head is kept only when ``classes`` are its
    classes) or the path of a state dict / lungscope checkpoint; see
    :func:`lungscope.models.weights.load_weights` for how it is fitted. A network registered with ``encoder_of``
    takes the ``features`` of that classifier's weights (:func:`lungscope.models.weights.load_encoder`).
    """
    spec = get_spec(name)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ConfigError(
            f"unknown option {', '.join(map(repr, unknown))} for model {name}; "
            f"valid options: {', '.join(spec.options) or 'none'}"
        )
    if "input_size" in inspect.signature(spec.builder).parameters:
        options["input_size"] = spec.input_size
    model = spec.builder(
        num_classes=_positive_int("num_classes", num_classes),
        in_channels=_positive_int("in_channels", in_channels),
        **options,
    )
    if pretrained is None:
        return model
    if spec.ensemble_of:
        raise ConfigError(f"{name}'s members start from pretrained weights as they are trained, one by one "
                          "(`lungscope train`); the joined network takes none")
    fresh_head = False
    if pretrained == LUNGSCOPE_CXR:
        weights = lungscope_cxr(spec.encoder_of or name)
        state, source = weights.state, weights.source
        fresh_head = classes is not None and tuple(classes) != weights.classes
    elif pretrained == "imagenet":
        if spec.family != "torchvision":
            raise ConfigError(
                f"{name} has no ImageNet weights (only torchvision backbones do); pass pretrained=PATH instead"
            )
        state, source = imagenet_state_dict(name), f"ImageNet weights of {name}"
    else:
        state, source = read_state_dict(pretrained), os.fspath(pretrained)
    if spec.encoder_of:
        load_encoder(model, state, source=source, model_name=name)
    else:
        load_weights(model, state, source=source, model_name=name, fresh_head=fresh_head)
    return model
