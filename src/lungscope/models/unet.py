"""A compact U-Net for lung-field segmentation (Ronneberger et al. 2015), small enough to ship and to run on a CPU.

Same shape as the original (two 3x3 convolutions per level, max-pool down, transposed convolution up, skip
connections by concatenation), with batch norm after each convolution, padding so the output has the input's size,
and ``base`` channels at the top level doubling per level (the paper: 64 and 5 levels; 16 and 4 suffice for lungs).
"""

from __future__ import annotations

import torch
from torch import nn

from lungscope.errors import ConfigError
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
