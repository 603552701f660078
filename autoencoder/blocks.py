"""The encoder's and decoder's layers: pre-activation residual blocks and factor-2 resampling."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with latent-diffusion's 32 groups, or gcd(32, channels) when 32 does not divide the channels."""
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6)


class ResidualBlock(nn.Module):
    """y = skip(x) + conv(dropout(SiLU(GN(conv(SiLU(GN(x))))))), 3×3 convs; skip is a 1×1 conv when the channels
    change, else the identity."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.residual = nn.Sequential(
            group_norm(in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1),
            group_norm(out_channels), nn.SiLU(), nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.residual(x)


class Downsample(nn.Module):
    """H × W → H/2 × W/2: a stride-2 3×3 conv (padding 1), channels kept."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """H × W → 2H × 2W: nearest-neighbour upsampling, then a 3×3 conv, channels kept."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
