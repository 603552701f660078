"""Inpainting masks: 1 where a pixel is known, 0 where it is to be filled; float tensors (N, 1, H, W).

RePaint's six mask types (Lugmayr et al. 2022; its wide and narrow masks are LaMa's random "thick" and
"thin" ones), with every length a fraction of the image side S = min(H, W), so that they serve 8×8 digits,
32×32 and 256×256 images alike:

    wide          1–3 random strokes of 2–4 segments, width S/6..S/3, plus a random box of side S/4..S/2
    narrow        2–5 random strokes of 2–6 segments, width S/32..S/16 (at least one pixel)
    half          the right half unknown
    lines         every second row unknown (RePaint's "ev2li")
    every_second  only the pixels at even rows and even columns known (2× super-resolution, "nn2"; ¾ unknown)
    expand        only the centre known: a border of S/4 on every side unknown ("ex64" at 256×256)

The random ones draw from a generator seeded by `seed` (the same seed, the same masks). A path ending in
`.png` is a user mask instead: white (≥ 128) known, black unknown, resized (nearest) to H×W.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

MASK_TYPES = ("wide", "narrow", "half", "lines", "every_second", "expand")


def make_masks(kind: str, n: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """n masks (n, 1, H, W) of a type of MASK_TYPES, or of the user mask at a `.png` path."""
    height, width = size
    check_mask(kind)
    if kind.lower().endswith(".png"):
        return load_mask(kind, size).expand(n, 1, height, width).clone()
    if kind in ("wide", "narrow"):
        generator = torch.Generator().manual_seed(seed)
        return torch.stack([random_mask(kind, size, generator) for _ in range(n)])
    rows = torch.arange(height).reshape(-1, 1)
    columns = torch.arange(width).reshape(1, -1)
    if kind == "half":
        known = columns < width // 2
    elif kind == "lines":
        known = rows % 2 == 0
    elif kind == "every_second":
        known = (rows % 2 == 0) & (columns % 2 == 0)
    else:
        border = max(1, min(height, width) // 4)
        known = (rows >= border) & (rows < height - border) & (columns >= border) & (columns < width - border)
    return known.float().expand(n, 1, height, width).clone()


def check_mask(kind) -> None:
    """A ValueError unless `kind` is one of MASK_TYPES or the path of a readable .png image."""
    if not isinstance(kind, str) or not (kind in MASK_TYPES or kind.lower().endswith(".png")):
        raise ValueError(f"unknown mask {kind!r}; valid: {', '.join(MASK_TYPES)}, or a path to a .png mask")
    if kind.lower().endswith(".png"):
        with open_mask(kind) as image:
            image.verify()


def random_mask(kind: str, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """One wide or narrow mask (1, H, W): random strokes (polylines of thick segments), plus a box if wide."""
    height, width = size
    side = min(height, width)
    wide = kind == "wide"
    strokes = _uniform_int(1, 3, generator) if wide else _uniform_int(2, 5, generator)
    unknown = torch.zeros(height, width, dtype=torch.bool)
    for _ in range(strokes):
        segments = _uniform_int(2, 4, generator) if wide else _uniform_int(2, 6, generator)
        stroke_width = max(1.0, side * (_uniform(1 / 6, 1 / 3, generator) if wide else _uniform(1 / 32, 1 / 16,
                                                                                                   generator)))
        point = torch.rand(2, generator=generator) * torch.tensor([height, width])
        for _ in range(segments):
            angle = _uniform(0, 2 * math.pi, generator)
            length = side * _uniform(1 / 8, 1 / 2, generator)
            end = point + length * torch.tensor([math.sin(angle), math.cos(angle)])
            unknown |= thick_segment(point, end, stroke_width, size)
            point = end.clamp(torch.zeros(2), torch.tensor([height - 1.0, width - 1.0]))
    if wide:
        box_height, box_width = (max(1, round(side * _uniform(1 / 4, 1 / 2, generator))) for _ in range(2))
        top, left = _uniform_int(0, height - box_height, generator), _uniform_int(0, width - box_width, generator)
        unknown[top : top + box_height, left : left + box_width] = True
    return (~unknown).float().unsqueeze(0)


def thick_segment(start: torch.Tensor, end: torch.Tensor, width: float, size: tuple[int, int]) -> torch.Tensor:
    """The pixels (H, W) whose centres lie within width/2 of the segment start→end (points as (row, column))."""
    height, width_px = size
    centres = torch.stack(torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width_px) + 0.5, indexing="ij"), -1)
    direction = end - start
    along = ((centres - start) @ direction / direction.dot(direction).clamp(min=1e-12)).clamp(0, 1)
    nearest = start + along.unsqueeze(-1) * direction
    return (centres - nearest).norm(dim=-1) <= width / 2


def load_mask(path: str | Path, size: tuple[int, int]) -> torch.Tensor:
    """A user mask (1, 1, H, W) from an image file: white (≥ 128 in grayscale) known, resized (nearest) to size."""
    with open_mask(path) as image:
        gray = image.convert("L").resize((size[1], size[0]), Image.NEAREST)
    return torch.from_numpy((np.asarray(gray) >= 128).astype(np.float32)).reshape(1, 1, *size)


@contextlib.contextmanager
def open_mask(path: str | Path):
    """The image at `path`, opened; a missing or unreadable file raises one error naming the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file {path} not found; give a PNG whose white pixels mark the known region")
    try:
        with Image.open(path) as image:
            yield image
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"mask file {path} is not a readable image ({type(error).__name__}: {error}); give a PNG "
                         "whose white pixels mark the known region") from None


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _uniform_int(low: int, high: int, generator: torch.Generator) -> int:
    """An integer uniform in low..high (both included)."""
    return int(torch.randint(low, high + 1, (), generator=generator))
