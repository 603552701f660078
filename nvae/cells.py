"""NVAE's residual cells (Vahdat & Kautz 2020, Fig. 3): y = skip(x) + 0.1 * branch(x).

Every cell knows the spatial size of its input, so that each convolution can track its spectral norm.
``norm`` is 'batch' (NVAE) or 'group' (batch-size independent: small batches, CPU).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from nvae.layers import Conv2d, Dropout, FactorizedReduce, SqueezeExcite, UpSample, norm2d

RESIDUAL_SCALE = 0.1


class EncoderCell(nn.Module):
    """branch = BN-Swish-conv3x3-BN-Swish-[dropout]-conv3x3-SE.

    ``downsample`` makes the first conv stride 2 (resolution halves) with a FactorizedReduce skip;
    otherwise the skip is the identity (or a 1x1 conv when the channel count changes).
    """

    def __init__(self, in_channels: int, out_channels: int, input_size: int, norm: str = "group",
                 dropout: float = 0.0, downsample: bool = False):
        super().__init__()
        stride = 2 if downsample else 1
        size = input_size // stride
        self.branch = nn.Sequential(
            norm2d(norm, in_channels), nn.SiLU(),
            Conv2d(in_channels, out_channels, 3, input_size, stride=stride),
            norm2d(norm, out_channels), nn.SiLU(), Dropout(dropout),
            Conv2d(out_channels, out_channels, 3, size),
            SqueezeExcite(out_channels),
        )
        self.skip = _skip(in_channels, out_channels, input_size, downsample=downsample, upsample=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + RESIDUAL_SCALE * self.branch(x)


class DecoderCell(nn.Module):
    """branch = [up x2]-BN-conv1x1-BN-Swish-dwconv5x5-BN-Swish-[dropout]-conv1x1-BN-SE (inverted residual,
    hidden width ``expansion`` * in_channels).

    ``upsample`` doubles the resolution (nearest neighbour at the start of the branch, nearest + 1x1
    conv in the skip); otherwise the skip is the identity (or a 1x1 conv when channels change).
    """

    def __init__(self, in_channels: int, out_channels: int, input_size: int, norm: str = "group",
                 dropout: float = 0.0, upsample: bool = False, expansion: int = 6):
        super().__init__()
        size = 2 * input_size if upsample else input_size
        hidden = expansion * in_channels
        self.branch = nn.Sequential(
            *([nn.Upsample(scale_factor=2.0, mode="nearest")] if upsample else []),
            norm2d(norm, in_channels),
            Conv2d(in_channels, hidden, 1, size, bias=False), norm2d(norm, hidden), nn.SiLU(),
            Conv2d(hidden, hidden, 5, size, groups=hidden, bias=False), norm2d(norm, hidden), nn.SiLU(),
            Dropout(dropout),
            Conv2d(hidden, out_channels, 1, size, bias=False), norm2d(norm, out_channels),
            SqueezeExcite(out_channels),
        )
        self.skip = _skip(in_channels, out_channels, input_size, downsample=False, upsample=upsample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + RESIDUAL_SCALE * self.branch(x)


def _skip(in_channels: int, out_channels: int, input_size: int, downsample: bool,
          upsample: bool) -> nn.Module:
    """The cell's skip path: FactorizedReduce (down), nearest + 1x1 conv (up), 1x1 conv or identity."""
    if downsample:
        return FactorizedReduce(in_channels, out_channels, input_size)
    if upsample:
        return UpSample(in_channels, out_channels, input_size)
    if in_channels != out_channels:
        return Conv2d(in_channels, out_channels, 1, input_size)
    return nn.Identity()
