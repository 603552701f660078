"""Conditioning of the score model (LDM's "crossattn" and "concat"), with classifier-free guidance.

- `ClassCondition`: class labels y ↦ τ_θ(y), tokens attended to by cross-attention in the U-Net.
- `MaskCondition`: a known region of an image (m ⊙ x, m) concatenated to the score network's input,
  average-pooled to the latent grid: a learned inpainter.
Both learn an unconditional model beside the conditional one by dropping the condition at rate
`drop_rate` in training (the null label / an all-zero input), so that sampling can use
classifier-free guidance:  ε̂_w = ε̂(z, t, ∅) + w·(ε̂(z, t, y) − ε̂(z, t, ∅)),  w = 0 unconditional,
w = 1 conditional, w > 1 sharper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClassCondition(nn.Module):
    """τ_θ(y) = MLP(embedding(y)) as `tokens` context tokens of width `context_dim`; label −1 is the null class."""

    kind = "class"

    def __init__(self, num_classes: int, context_dim: int = 64, tokens: int = 1, drop_rate: float = 0.1):
        super().__init__()
        self.num_classes, self.context_dim, self.tokens, self.drop_rate = num_classes, context_dim, tokens, drop_rate
        self.embedding = nn.Embedding(num_classes + 1, context_dim)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(context_dim, tokens * context_dim))

    def network_arguments(self) -> dict:
        return {"context_dim": self.context_dim}

    def inputs(self, y: torch.Tensor) -> dict:
        """The score network's keyword inputs for labels y (B,) (−1: unconditional)."""
        y = torch.as_tensor(y, device=self.embedding.weight.device).long()
        if bool(((y < -1) | (y >= self.num_classes)).any()):
            raise ValueError(f"class labels must lie in 0..{self.num_classes - 1} (or −1 for none)")
        index = torch.where(y < 0, torch.full_like(y, self.num_classes), y)
        tokens = self.mlp(self.embedding(index)).view(y.shape[0], self.tokens, self.context_dim)
        return {"context": tokens}

    def null_inputs(self, batch_size: int, reference: torch.Tensor) -> dict:
        """The inputs of the null label for a batch of `batch_size`."""
        return self.inputs(torch.full((batch_size,), -1, dtype=torch.long))

    def drop(self, y: torch.Tensor) -> torch.Tensor:
        """y with each label replaced by the null label with probability `drop_rate` (training)."""
        dropped = torch.rand(y.shape[0], device=y.device) < self.drop_rate
        return torch.where(dropped, torch.full_like(y, -1), y)


class MaskCondition(nn.Module):
    """The known pixels as input channels: cond = pool([m ⊙ x, m]) on the latent grid (C + 1 channels)."""

    kind = "mask"

    def __init__(self, data_channels: int, latent_size: int, drop_rate: float = 0.1):
        super().__init__()
        self.data_channels, self.latent_size, self.drop_rate = data_channels, latent_size, drop_rate

    def network_arguments(self) -> dict:
        return {"cond_channels": self.data_channels + 1}

    def inputs(self, y: tuple[torch.Tensor, torch.Tensor]) -> dict:
        """y = (x, mask): images in [−1, 1] and a mask, 1 where known, broadcastable to (B, 1, H, W)."""
        x, mask = y
        mask = mask.to(x.dtype).expand(x.shape[0], 1, *x.shape[2:])
        known = torch.cat([mask * x, mask], dim=1)
        return {"cond": F.adaptive_avg_pool2d(known, self.latent_size)}

    def null_inputs(self, batch_size: int, reference: torch.Tensor) -> dict:
        """No known pixels: an all-zero input (on the device and in the dtype of `reference`)."""
        shape = (batch_size, self.data_channels + 1, self.latent_size, self.latent_size)
        return {"cond": reference.new_zeros(shape)}

    def drop(self, y):
        x, mask = y
        kept = (torch.rand(x.shape[0], 1, 1, 1, device=x.device) >= self.drop_rate).to(x.dtype)
        return x, mask.to(x.dtype).expand(x.shape[0], 1, *x.shape[2:]) * kept


def random_masks(batch_size: int, size, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training masks (B, 1, H, W), 1 = known: each an axis-aligned box of unknown pixels with random position
    and sides between a quarter and three quarters of the image (the region a learned inpainter fills)."""
    height, width = size
    rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    box_h = (height * (0.25 + 0.5 * rand(batch_size))).long().clamp(min=1)
    box_w = (width * (0.25 + 0.5 * rand(batch_size))).long().clamp(min=1)
    top = (rand(batch_size) * (height - box_h + 1)).long()
    left = (rand(batch_size) * (width - box_w + 1)).long()
    rows, cols = torch.arange(height)[None, :, None], torch.arange(width)[None, None, :]
    inside = ((rows >= top[:, None, None]) & (rows < (top + box_h)[:, None, None])
              & (cols >= left[:, None, None]) & (cols < (left + box_w)[:, None, None]))
    return (~inside).float()[:, None].to(device)


def build_condition(cfg, data_shape, latent_shape, num_classes: int | None = None) -> nn.Module | None:
    """The conditioning module of the `condition` config (None: unconditional); a class condition has the
    dataset's `num_classes` (a config's own `num_classes`, as runs before this was read from the data had, wins)."""
    if cfg is None:
        return None
    cfg = dict(cfg)
    kind = cfg.pop("kind", None)
    if kind == "class":
        num_classes = cfg.pop("num_classes", None) or num_classes
        if num_classes is None:
            raise ValueError("a class condition needs a labelled dataset (this one has no classes)")
        return ClassCondition(num_classes, **cfg)
    if kind == "mask":
        return MaskCondition(data_shape[0], latent_shape[1], **cfg)
    raise ValueError(f"unknown condition kind {kind!r}; valid: class, mask")
