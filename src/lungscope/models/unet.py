"""U-Nets for lung-field segmentation (Ronneberger et al. 2015), small enough to ship and to run on a CPU.

``lung-unet`` has the original's shape (two 3x3 convolutions per level, max-pool down, transposed convolution up,
skip connections by concatenation), with batch norm after each convolution, padding so the output has the input's
size, and ``base`` channels at the top level doubling per level (the paper: 64 and 5 levels; 16 and 4 suffice).

``cxr-unet`` is a U-Net whose encoder is ``cxr-resnet``'s ``features`` (the same modules under the same names), so
lungscope's own chest X-ray classifier can start it (``pretrained="lungscope-cxr"`` or a cxr-resnet checkpoint):
the encoder-transfer U-Nets of lung segmentation (e.g. TernausNet, Iglovikov & Shvets 2018, with ImageNet's VGG),
here with a chest X-ray encoder, as no ImageNet weights can be fetched offline.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from lungscope.errors import ConfigError
from lungscope.models.cxr import CXRResNet
from lungscope.models.registry import register_model


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """``(N, in_channels, H, W)`` -> per-pixel logits ``(N, num_classes, H, W)``; H and W divisible by 2**(depth-1)."""

    def __init__(self, num_classes: int = 1, in_channels: int = 1, base: int = 16, depth: int = 4) -> None:
        super().__init__()
        if base < 1 or depth < 2:
            raise ConfigError(f"U-Net needs base >= 1 and depth >= 2, got base={base}, depth={depth}")
        widths = [base * 2**level for level in range(depth)]
        self.down = nn.ModuleList(
            _double_conv(c_in, c_out) for c_in, c_out in zip([in_channels, *widths[:-1]], widths)
        )
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(nn.ConvTranspose2d(w, w // 2, 2, stride=2) for w in reversed(widths[1:]))
        self.merge = nn.ModuleList(_double_conv(w, w // 2) for w in reversed(widths[1:]))
        self.head = nn.Conv2d(base, num_classes, 1)
        self.multiple = 2 ** (depth - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % self.multiple or x.shape[-1] % self.multiple:
            raise ValueError(f"U-Net input sides must be multiples of {self.multiple}, got {tuple(x.shape[-2:])}")
        skips = []
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else self.pool(x))
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1])):
            x = merge(torch.cat([skip, up(x)], dim=1))
        return self.head(x)


@register_model(
    "lung-unet",
    input_size=128,
    description="compact U-Net (4 levels, 16-128 channels) segmenting lung fields; per-pixel logits",
    family="segmentation",
)
def lung_unet(num_classes: int = 1, in_channels: int = 1, base: int = 16, depth: int = 4) -> UNet:
    return UNet(num_classes, in_channels, base, depth)


class CXRUNet(nn.Module):
    """``cxr-resnet``'s ``features`` as the encoder (strides 2, 4, 8, 16, 32), a decoder that doubles the resolution
    four times (bilinear upsampling, concatenation with the encoder's map of that size, two 3x3 convolutions), and a
    1x1 head at half the input's side whose logits are upsampled bilinearly to the input's side (lung borders are
    smooth: a mask at half resolution and back keeps a Dice of 0.998, see benchmarks/results/segmentation.md)."""

    def __init__(self, num_classes: int, in_channels: int, width: int, blocks: tuple[int, ...]) -> None:
        super().__init__()
        self.features = CXRResNet(2, in_channels, width, blocks, dropout=0.0).features  # validates width, blocks
        # The maps kept for the skips: the stem's ReLU (stride 2), then each stage but the last.
        self.skips = [2, *range(4, 4 + len(blocks) - 1)]
        widths = [width, *(width * 2**index for index in range(len(blocks)))]  # stem, then each stage
        channels = widths[-1]
        self.merge = nn.ModuleList()
        for skip in reversed(widths[1:-1]):  # each merge keeps its skip's width, the stem's (stride 2) half of it
            self.merge.append(_double_conv(channels + skip, skip))
            channels = skip
        self.merge.append(_double_conv(channels + widths[0], widths[0] // 2))
        self.head = nn.Conv2d(widths[0] // 2, num_classes, 1)
        self.multiple = 2 ** (len(blocks) + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % self.multiple or x.shape[-1] % self.multiple:
            raise ValueError(f"cxr-unet input sides must be multiples of {self.multiple}, got {tuple(x.shape[-2:])}")
        size, kept = x.shape[-2:], []
        for index, module in enumerate(self.features):
            x = module(x)
            if index in self.skips:
                kept.append(x)
        for merge, skip in zip(self.merge, reversed(kept)):
            up = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = merge(torch.cat([skip, up], dim=1))
        return F.interpolate(self.head(x), size=size, mode="bilinear", align_corners=False)


@register_model(
    "cxr-unet",
    input_size=224,
    description="U-Net on cxr-resnet's encoder (base width 32), startable from lungscope-cxr; per-pixel logits",
    family="segmentation",
    encoder_of="cxr-resnet",
)
def cxr_unet(
    num_classes: int = 1, in_channels: int = 1, width: int = 32, blocks: tuple[int, ...] | list[int] = (2, 2, 2, 2)
) -> CXRUNet:
    return CXRUNet(num_classes, in_channels, width, tuple(blocks))
