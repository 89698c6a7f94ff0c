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
        logits = self.fc(self.dropout(self.pool(self.relu(self.cam(self.features(x)))).flatten(1)))
        return logits - logits.mean(dim=1, keepdim=True) if logits.shape[1] > 1 else logits


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
