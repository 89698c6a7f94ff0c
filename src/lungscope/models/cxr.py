"""lungscope's own network for chest X-ray screening on a CPU: a narrow ResNet with a class-activation head.

``cxr-resnet`` is ResNet-18's layout (He et al. 2016; torchvision's ``BasicBlock``) at a chosen base width (32 by
default: a quarter of ResNet-18's multiply-adds) for one input channel. At 224x224 its last grid is 7x7, so Grad-CAM
marks regions, not edges. After the last stage a 1x1 convolution and a ReLU (the ``cam`` and ``relu`` layers) feed
global average pooling and the linear classifier, so each logit is a weighted sum of the rectified maps' means (Zhou et
al. 2016's class activation map). Two choices make Grad-CAM show exactly what moves the answer:

- Its target layer is ``relu``, the maps the head pools (:func:`~lungscope.models.gradcam_layer`), not the
  convolution before it: below zero the convolution's output never reaches the logits, yet Grad-CAM on it would weigh
  those values in; measured on the bundled model, they made 97% of the map's mass negative and straight-edged.
- The logits are centred (their mean over classes subtracted). The softmax ignores a component shared by all
  classes, so training leaves it free, and Grad-CAM of an uncentred logit would show it; centred, class ``c``'s map is
  its evidence against the other classes (for two classes, half the log-odds map). Probabilities are unchanged.

Lung-aware training (:mod:`lungscope.training.lung_focus`) penalises the same map that ``explain`` shows.

``cxr-resnet-ensemble`` is several cxr-resnets trained apart (each from its own seed, :mod:`lungscope.training`
trains them one by one) joined into one network: their rectified maps side by side, pooled, and one linear layer whose
weights are the members' heads divided by their number. Its logits are the mean of the members' logits, and Grad-CAM
on its ``relu`` is the ensemble's own map (the members' maps summed before the rectification, the same linear
algebra that makes one member's map exact), so prediction, calibration, export and explanation take it unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from lungscope.errors import ConfigError
from lungscope.models.registry import register_model


def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or in_planes != planes:
        downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
    layers = [BasicBlock(in_planes, planes, stride, downsample)]
    layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class CXRResNet(nn.Module):
    """``features`` (stem and four ResNet stages) -> ``cam`` (1x1 conv) -> ``relu`` -> average pool -> dropout ->
    linear -> logits centred over the classes (when there are several)."""

    gradcam_layer = "relu"

    def __init__(self, num_classes: int, in_channels: int, width: int, blocks: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 4:
            raise ConfigError(f"cxr-resnet width must be an integer >= 4, got {width!r}")
        if not blocks or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in blocks):
            raise ConfigError(f"cxr-resnet blocks must be positive integers, got {blocks!r}")
        if not 0 <= dropout < 1:
            raise ConfigError(f"cxr-resnet dropout must be in [0, 1), got {dropout}")
        stages: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        ]
        planes = width
        for index, count in enumerate(blocks):
            out = width * 2**index
            stages.append(_stage(planes, out, count, 1 if index == 0 else 2))
            planes = out
        self.features = nn.Sequential(*stages)
        self.cam = nn.Conv2d(planes, planes, 1)
        self.relu = nn.ReLU()  # not in-place: Grad-CAM's layer; a hook on it sees its output unchanged
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(planes, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        for module in self.modules():  # each residual branch starts as the identity (Goyal et al. 2017)
            if isinstance(module, BasicBlock):
                nn.init.zeros_(module.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _centred(self.fc(self.dropout(self.pool(self.relu(self.cam(self.features(x)))).flatten(1))))


def _centred(logits: torch.Tensor) -> torch.Tensor:
    return logits - logits.mean(dim=1, keepdim=True) if logits.shape[1] > 1 else logits


class _Body(nn.Module):
    """A member of an ensemble: a cxr-resnet's ``features`` and ``cam`` (its maps before the rectification)."""

    def __init__(self, features: nn.Module, cam: nn.Module) -> None:
        super().__init__()
        self.features, self.cam = features, cam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam(self.features(x))


class CXRResNetEnsemble(nn.Module):
    """``members`` cxr-resnet bodies (each ``features`` -> ``cam``) -> their maps side by side -> ``relu`` ->
    average pool -> dropout -> one linear layer -> centred logits: the mean of the members' logits once
    :meth:`load_members` has loaded the members' weights."""

    gradcam_layer = "relu"

    def __init__(self, num_classes: int, in_channels: int, members: int, width: int, blocks: tuple[int, ...],
                 dropout: float) -> None:
        super().__init__()
        if isinstance(members, bool) or not isinstance(members, int) or members < 2:
            raise ConfigError(f"cxr-resnet-ensemble members must be an integer >= 2, got {members!r}")
        nets = [CXRResNet(num_classes, in_channels, width, blocks, dropout) for _ in range(members)]
        self.members = nn.ModuleList(_Body(net.features, net.cam) for net in nets)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        planes = nets[0].fc.in_features
        self.fc = nn.Linear(members * planes, num_classes)

    def load_members(self, states: list[dict[str, torch.Tensor]]) -> None:
        """Load trained cxr-resnets' state dicts: each body as it is, their heads side by side divided by their
        number (so the logits are the mean of theirs), their biases averaged."""
        if len(states) != len(self.members):
            raise ConfigError(f"{len(self.members)} members, not {len(states)}")
        state = {f"members.{k}.{key}": value for k, member in enumerate(states) for key, value in member.items()
                 if not key.startswith("fc.")}
        state["fc.weight"] = torch.cat([member["fc.weight"] for member in states], dim=1) / len(states)
        state["fc.bias"] = torch.stack([member["fc.bias"] for member in states]).mean(dim=0)
        self.load_state_dict(state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = torch.cat([member(x) for member in self.members], dim=1)
        return _centred(self.fc(self.dropout(self.pool(self.relu(maps)).flatten(1))))


@register_model(
    "cxr-resnet",
    input_size=224,
    description="lungscope's narrow ResNet-18 layout (base width 32) with a CAM head; 7x7 last grid at 224",
    family="paper",
)
def cxr_resnet(
    num_classes: int, in_channels: int, width: int = 32, blocks: tuple[int, ...] | list[int] = (2, 2, 2, 2),
    dropout: float = 0.2,
) -> nn.Module:
    return CXRResNet(num_classes, in_channels, width, tuple(blocks), dropout)


@register_model(
    "cxr-resnet-ensemble",
    input_size=224,
    description="cxr-resnets trained apart from their own seeds, answering as one (the mean of their logits)",
    family="composite",
    ensemble_of="cxr-resnet",
)
def cxr_resnet_ensemble(
    num_classes: int, in_channels: int, members: int = 3, width: int = 32,
    blocks: tuple[int, ...] | list[int] = (2, 2, 2, 2), dropout: float = 0.2,
) -> nn.Module:
    return CXRResNetEnsemble(num_classes, in_channels, members, width, tuple(blocks), dropout)
