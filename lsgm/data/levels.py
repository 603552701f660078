"""Pixel levels: an image with ``levels`` values per pixel lives in [-1, 1].

Pixel value k in {0, ..., levels - 1} is x = 2k / (levels - 1) - 1 (:func:`to_unit_range`), and back by
rounding and clamping (:func:`to_levels`): 256 levels for 8-bit images, 17 for sklearn digits, 2 for binary
images. Bits/dim are computed against these bins.
"""

from __future__ import annotations

import numpy as np
import torch


def to_unit_range(k: torch.Tensor | np.ndarray, levels: int) -> torch.Tensor:
    """Map integer pixel values k in {0..levels-1} to x = 2k / (levels - 1) - 1 (float32, in [-1, 1])."""
    return torch.as_tensor(k).to(torch.float32) * (2.0 / (levels - 1)) - 1.0


def to_levels(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Map x in [-1, 1] to the nearest pixel value k = round((x + 1)(levels - 1) / 2), clamped to
    {0..levels-1}, as an int64 tensor."""
    return torch.round((x + 1.0) * ((levels - 1) / 2.0)).clamp(0, levels - 1).to(torch.int64)
