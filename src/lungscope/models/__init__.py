"""Model registry: the paper CNNs and torchvision backbones, built by name.

>>> from lungscope.models import create_model
>>> model = create_model("resnet18", num_classes=2, in_channels=1, pretrained="imagenet")
"""

from lungscope.models import backbones, cxr, papers, two_stage, unet  # noqa: F401  (importing them registers their networks)
from lungscope.models.layers import classifier_head, count_parameters, gradcam_layer, last_conv_layer
from lungscope.models.registry import (
    ModelSpec,
    create_model,
    get_spec,
    list_models,
    register_model,
)

__all__ = [
    "ModelSpec",
    "classifier_head",
    "count_parameters",
    "create_model",
    "get_spec",
    "gradcam_layer",
    "last_conv_layer",
    "list_models",
    "register_model",
]
