"""PNG grids of images in [-1, 1], with integer upscaling so that tiny (8x8) images stay visible."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lsgm.data import to_levels


def image_grid(
    images: torch.Tensor, nrow: int | None = None, padding: int = 2, scale: int = 1, pad_value: float = 0.0
) -> np.ndarray:
    """Tile images (B, C, H, W) in [-1, 1], C in {1, 3}, into one uint8 array (rows, columns, C).

    Each image is upscaled ``scale`` times (nearest neighbour), placed row by row with ``nrow``
    images per row (default ceil(sqrt(B))), ``padding`` pixels of ``pad_value`` (in [-1, 1]; the default 0 is
    mid grey, which stays visible against both black and white digits touching their tile's edge) between images
    and around the border. Pixel k = round((x + 1) * 255 / 2).
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(f"expected images (B, C, H, W) with B > 0 and C in {{1, 3}}, "
                         f"got {tuple(images.shape)}")
    pixels = to_levels(images.detach().to("cpu", torch.float32), 256).to(torch.uint8)
    pixels = pixels.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    count, channels, height, width = pixels.shape
    columns = nrow or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    fill = to_levels(torch.tensor(pad_value), 256).item()
    grid_height, grid_width = padding + rows * (height + padding), padding + columns * (width + padding)
    grid = torch.full((channels, grid_height, grid_width), fill, dtype=torch.uint8)
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = padding + row * (height + padding), padding + column * (width + padding)
        grid[:, top : top + height, left : left + width] = pixels[index]
    return grid.permute(1, 2, 0).numpy()


def save_image_grid(
    images: torch.Tensor,
    path: str | Path,
    nrow: int | None = None,
    padding: int = 2,
    scale: int = 1,
    pad_value: float = 0.0,
) -> Path:
    """Write :func:`image_grid` of ``images`` as a PNG (grayscale for C = 1, RGB for C = 3) at
    ``path``, creating its folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = image_grid(images, nrow, padding, scale, pad_value)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path, format="PNG")
    return path


def upscale_factor(height: int, width: int, target: int = 64) -> int:
    """The integer scale that brings the larger side of an image near ``target`` pixels (at least 1)."""
    return max(1, target // max(height, width))
