"""The small CNNs of our sources, built from their papers' descriptions (details the papers leave open are noted).

Each is a :class:`PaperNet`: ``features`` (convolutions) -> ``pool`` -> flatten -> ``classifier`` (linear layers).
``pool`` is an adaptive average pool to the grid ``features`` give at the stated input size: there it is the
identity, so the net is exactly the described one, and at other sizes the same dense layers still fit. Smallest
input each accepts (every feature map keeps a pixel): shallow-cnn 4, three-block-cnn 8, five-block-cnn 32,
alexnet-lrn-cnn 35. Activations are not in-place, so hooks on a convolution (Grad-CAM) see its output unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from lungscope.errors import ConfigError
from lungscope.models.registry import register_model

ACTIVATIONS: tuple[str, ...] = ("relu", "leaky_relu", "prelu")
LEAKY_SLOPE = 0.01  # LeakyReLU's usual negative slope (Maas et al. 2013; PyTorch's default)


class PaperNet(nn.Module):
    """``features`` -> adaptive pool to their grid at ``input_size`` -> flatten -> ``classifier(flat_size)``."""

    def __init__(
        self,
        features: nn.Sequential,
        classifier: Callable[[int], nn.Sequential],
        in_channels: int,
        input_size: int,
    ) -> None:
        super().__init__()
        self.features = features
        channels, height, width = self._feature_shape(in_channels, input_size)
        self.pool = nn.AdaptiveAvgPool2d((height, width))
        self.classifier = classifier(channels * height * width)

    def _feature_shape(self, in_channels: int, input_size: int) -> tuple[int, int, int]:
        """Shape of ``features``' output for one input of the stated size (eval mode: BatchNorm stats untouched)."""
        self.features.eval()
        with torch.no_grad():
            shape = self.features(torch.zeros(1, in_channels, input_size, input_size)).shape
        self.features.train()
        return shape[1], shape[2], shape[3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def _activation(activation: str, alpha: float | None) -> Callable[[int], nn.Module]:
    """``make(channels)`` for the chosen activation; PReLU learns one negative slope per channel (He et al. 2015)."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    if alpha is not None and activation != "leaky_relu":
        raise ConfigError(f"option alpha applies only to activation 'leaky_relu', not {activation!r}")
    if activation == "relu":
        return lambda channels: nn.ReLU()
    if activation == "prelu":
        return nn.PReLU
    slope = LEAKY_SLOPE if alpha is None else alpha
    if isinstance(slope, bool) or not isinstance(slope, int | float) or not 0 <= slope < 1:
        raise ConfigError(f"alpha must be a number in [0, 1), got {alpha!r}")
    return lambda channels: nn.LeakyReLU(slope)


@register_model(
    "shallow-cnn",
    input_size=64,
    description="one 3x3 conv (64 filters) + ReLU, 2x2 max-pool, one fully connected layer",
    family="paper",
)
def shallow_cnn(num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    # The description gives no padding, so none (64 -> 62 -> 31); the block nets below need "same" padding to fit.
    features = nn.Sequential(nn.Conv2d(in_channels, 64, 3), nn.ReLU(), nn.MaxPool2d(2))
    return PaperNet(features, lambda flat: nn.Sequential(nn.Linear(flat, num_classes)), in_channels, input_size)


@register_model(
    "five-block-cnn",
    input_size=150,
    description="five blocks of conv + separable conv, batch norm, max-pool (16-256 filters), dropout, dense head",
    family="paper",
)
def five_block_cnn(
    num_classes: int, in_channels: int, input_size: int, activation: str = "relu", alpha: float | None = None
) -> nn.Module:
    """``activation``: relu, leaky_relu (negative slope ``alpha``, default 0.01) or prelu.

    Head (the description says only "dropout, a dense head"): dropout 0.5, 128 units, the activation, the logits.
    """
    act = _activation(activation, alpha)

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(cin, cout, 3, padding=1),
                act1=act(cout),
                depthwise=nn.Conv2d(cout, cout, 3, padding=1, groups=cout),
                pointwise=nn.Conv2d(cout, cout, 1),
                act2=act(cout),
                bn=nn.BatchNorm2d(cout),
                pool=nn.MaxPool2d(2),
            )
        )

    widths = [in_channels, 16, 32, 64, 128, 256]
    features = nn.Sequential(
        OrderedDict((f"block{i}", block(cin, cout)) for i, (cin, cout) in enumerate(zip(widths, widths[1:]), 1))
    )
    return PaperNet(
        features,
        lambda flat: nn.Sequential(nn.Dropout(0.5), nn.Linear(flat, 128), act(128), nn.Linear(128, num_classes)),
        in_channels,
        input_size,
    )


@register_model(
    "three-block-cnn",
    input_size=128,
    description="three blocks of conv, LeakyReLU, max-pool, dropout (32-128 filters), then two linear layers",
    family="paper",
)
def three_block_cnn(num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    """Filter counts (32, 64, 128), dropout 0.25 and the 128-unit hidden layer are our reading of the paper."""

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE), nn.MaxPool2d(2), nn.Dropout(0.25)
        )

    features = nn.Sequential(block(in_channels, 32), block(32, 64), block(64, 128))
    return PaperNet(
        features,
        lambda flat: nn.Sequential(nn.Linear(flat, 128), nn.LeakyReLU(LEAKY_SLOPE), nn.Linear(128, num_classes)),
        in_channels,
        input_size,
    )


@register_model(
    "alexnet-lrn-cnn",
    input_size=227,
    description="AlexNet-style: five convs (96 7x7/2, 128, 256, 256, 256), LRN, 3x3/2 max-pool, FC 4096-4096",
    family="paper",
)
def alexnet_lrn_cnn(num_classes: int, in_channels: int, input_size: int, init: str = "alexnet") -> nn.Module:
    """Laid out as AlexNet (Krizhevsky et al. 2012): LRN (n=5, alpha=1e-4, beta=0.75, k=2) after the ReLUs of conv1
    and conv2, overlapping 3x3 stride-2 max-pooling after conv1, conv2 and conv5; the 3x3 convs keep their size
    (padding 1). At 227 the grid is 13x13, so fc1 alone has 177 M weights.

    ``init="alexnet"`` initialises as AlexNet: every weight from N(0, 0.01^2); biases 1 in conv2, conv4, conv5 and the
    two hidden fully connected layers (to start their ReLUs with positive inputs), 0 elsewhere. On single-channel
    X-rays this shrinks the activations' spread ~100-fold by conv3, so the untrained net gives every image the same
    logits and SGD does not get it off chance in a CPU budget. ``init="he"``: He et al. (2015) normal initialisation
    for ReLU nets (fan-in), zero biases, which keeps the spread and the dependence on the input.
    """
    if init not in ("alexnet", "he"):
        raise ConfigError(f"unknown init {init!r} for alexnet-lrn-cnn; choose alexnet or he")
    def lrn() -> nn.LocalResponseNorm:
        return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)

    def pool() -> nn.MaxPool2d:
        return nn.MaxPool2d(3, stride=2)

    features = nn.Sequential(
        nn.Conv2d(in_channels, 96, 7, stride=2), nn.ReLU(), lrn(), pool(),
        nn.Conv2d(96, 128, 3, padding=1), nn.ReLU(), lrn(), pool(),
        nn.Conv2d(128, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), pool(),
    )  # fmt: skip
    model = PaperNet(
        features,
        lambda flat: nn.Sequential(
            nn.Dropout(0.5), nn.Linear(flat, 4096), nn.ReLU(),
            nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(),
            nn.Linear(4096, num_classes),
        ),  # fmt: skip
        in_channels,
        input_size,
    )
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]  # conv1-5, fc1-3
    for layer, bias in zip(layers, (0, 1, 0, 1, 1, 1, 1, 0), strict=True):
        assert layer.bias is not None  # every layer of this network is built with a bias
        if init == "he":
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
        else:
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.constant_(layer.bias, bias)
    return model
