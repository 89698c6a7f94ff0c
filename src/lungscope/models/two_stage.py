"""A two-stage model: a registry backbone giving feature vectors and a small dense head classifying them.

This is how one of our sources classifies normal, bacterial and viral pneumonia: features of a fine-tuned ResNet50,
then dense layers with sigmoid activations and dropout, and a softmax. Built whole, it is an ordinary registry model,
so prediction, evaluation, export and Grad-CAM (on the backbone's last convolution) take it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lungscope.errors import ConfigError
from lungscope.models.features import LayerOutput, features_at
from lungscope.models.registry import create_model, get_spec, register_model

DEFAULT_BACKBONE = "resnet18"
DEFAULT_HIDDEN = (512, 128)
DEFAULT_DROPOUT = 0.5


def dense_head(in_features: int, num_classes: int, hidden: Sequence[int] = DEFAULT_HIDDEN,
               dropout: float = DEFAULT_DROPOUT) -> nn.Sequential:
    """Per hidden size a Linear, a sigmoid and dropout, then the Linear giving the logits (softmax is the loss's).

    With no hidden layer it is multinomial logistic regression.
    """
    if not 0 <= dropout < 1:
        raise ConfigError(f"dropout must be in [0, 1), not {dropout}")
    if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
        raise ConfigError(f"hidden sizes must be positive integers, not {list(hidden)}")
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.Sigmoid(), nn.Dropout(dropout)]
        width = size
    return nn.Sequential(*layers, nn.Linear(width, num_classes))


class TwoStage(nn.Module):
    """``head(backbone(x))``, where ``backbone`` maps images (N, C, S, S) to feature vectors (N, D)."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def load_backbone(self, state: dict[str, torch.Tensor], *, source: str) -> None:
        """Load a trained registry model's weights into the backbone; its layers after the cut are not needed."""
        target = self.backbone.body if isinstance(self.backbone, LayerOutput) else self.backbone
        wanted = target.state_dict()
        if missing := [key for key in wanted if key not in state]:
            raise ConfigError(f"{source} does not fit the backbone: missing {', '.join(missing[:3])}")
        try:
            target.load_state_dict({key: state[key] for key in wanted})
        except RuntimeError as error:  # shapes differ: another backbone or other options
            raise ConfigError(f"{source} does not fit the backbone: {str(error).splitlines()[-1].strip()}") from None


def feature_backbone(
    name: str, in_channels: int = 1, options: dict[str, Any] | None = None, layer: str | None = None
) -> tuple[nn.Module, int]:
    """The registry network ``name`` cut to give features at ``layer`` (see :func:`features_at`), and their
    length."""
    model = create_model(name, num_classes=2, in_channels=in_channels, **(options or {}))
    size = get_spec(name).input_size
    example = torch.zeros(1, in_channels, size, size, device=next(model.parameters()).device)
    return features_at(model, layer, example)


@register_model(
    "two-stage",
    input_size=get_spec(DEFAULT_BACKBONE).input_size,
    description="a registry backbone's features (default: the input of its last Linear) and a dense sigmoid head",
    family="composite",
)
def two_stage(
    num_classes: int,
    in_channels: int,
    backbone: str = DEFAULT_BACKBONE,
    backbone_options: dict[str, Any] | None = None,
    layer: str | None = None,
    hidden: Sequence[int] = DEFAULT_HIDDEN,
    dropout: float = DEFAULT_DROPOUT,
) -> TwoStage:
    """``backbone`` (a registry name, with ``backbone_options``) cut at ``layer`` (see :func:`feature_backbone`),
    then :func:`dense_head` with ``hidden`` sizes and ``dropout``; ``hidden=[]`` makes the head linear."""
    if backbone == "two-stage":
        raise ConfigError("the backbone of a two-stage model cannot itself be two-stage")
    body, dim = feature_backbone(backbone, in_channels, backbone_options, layer)
    return TwoStage(body, dense_head(dim, num_classes, list(hidden), dropout))
