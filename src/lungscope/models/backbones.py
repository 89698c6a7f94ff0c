"""torchvision backbones, adapted to the number of input channels and of classes."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision.models import get_model

from lungscope.models.layers import first_conv_layer
from lungscope.models.registry import register_model

BACKBONES: dict[str, str] = {
    "resnet18": "ResNet-18 (He et al. 2016)",
    "resnet50": "ResNet-50 (He et al. 2016)",
    "densenet121": "DenseNet-121 (Huang et al. 2017), CheXNet's backbone",
    "vgg16": "VGG-16 (Simonyan & Zisserman 2015)",
    "vgg19": "VGG-19 (Simonyan & Zisserman 2015)",
    "alexnet": "AlexNet, torchvision's one-GPU variant (Krizhevsky 2014)",
    "efficientnet_b0": "EfficientNet-B0 (Tan & Le 2019)",
    "mobilenet_v3_small": "MobileNetV3-Small (Howard et al. 2019)",
    "mobilenet_v3_large": "MobileNetV3-Large (Howard et al. 2019)",
}


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Swap the first convolution for one taking ``in_channels`` (same geometry, PyTorch's default init)."""
    name, conv = first_conv_layer(model)
    # The geometry is the Conv2d's own 2-tuples; torch's stub types _ConvNd's as tuple[int, ...], hence the ignores.
    model.set_submodule(
        name,
        nn.Conv2d(
            in_channels,
            conv.out_channels,
            conv.kernel_size,  # type: ignore[arg-type]
            stride=conv.stride,  # type: ignore[arg-type]
            padding=conv.padding,  # type: ignore[arg-type]
            dilation=conv.dilation,  # type: ignore[arg-type]
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
        ),
    )


def _builder(arch: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_channels: int) -> nn.Module:
        # torchvision builds the head for num_classes itself (with its own init); that head is the last nn.Linear.
        model = get_model(arch, weights=None, num_classes=num_classes)
        if in_channels != 3:
            _replace_first_conv(model, in_channels)
        return model

    return build


for _arch, _description in BACKBONES.items():
    register_model(_arch, input_size=224, description=_description, family="torchvision")(_builder(_arch))
