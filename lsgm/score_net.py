"""A time-conditional U-Net that predicts ε, for latent tensors and for pixels alike.

DDPM/NCSN++-lite layout: residual blocks (GroupNorm–SiLU–conv, time embedding added between the
convolutions, dropout), self-attention at the listed resolutions and in the middle, strided-conv
down-sampling and nearest-neighbour up-sampling with skip connections; the output convolution starts
at zero so an untrained network predicts ε = 0. Two ways to condition (LDM's "concat" and
"crossattn"): a tensor concatenated to the input channels (`cond_channels`), and tokens
τ_θ(y) of width `context_dim` attended to by cross-attention at the attention resolutions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nvae.layers import Dropout


def group_count(channels: int, max_groups: int = 32) -> int:
    """The largest group count ≤ max_groups that divides `channels` (GroupNorm needs a divisor)."""
    return next(g for g in range(min(max_groups, channels), 0, -1) if channels % g == 0)


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(group_count(channels), channels)


def zero_init(module: nn.Module) -> nn.Module:
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


def timestep_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Transformer sinusoids of scale·t: [sin(scale·t·ω_k), cos(scale·t·ω_k)], ω_k = 10000^(−k/(dim/2))."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = scale * t.float()[:, None] * frequencies[None]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return F.pad(embedding, (0, dim % 2))


class ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))) + W·temb;  out = skip(x) + conv(dropout(SiLU(GN(h))))."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = norm(in_channels), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.temb = nn.Linear(temb_channels, out_channels)
        self.norm2, self.dropout = norm(out_channels), Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x))) + self.temb(temb)[:, :, None, None]
        return self.skip(x) + self.conv2(self.dropout(F.silu(self.norm2(h))))


class Attention(nn.Module):
    """Multi-head attention of the pixels of x (queries) over themselves or over context tokens.

    out = x + W_o·softmax(QKᵀ/√d)V, with Q from GN(x) and K, V from GN(x) (self) or from the context.
    """

    def __init__(self, channels: int, num_heads: int = 4, context_dim: int | None = None):
        super().__init__()
        self.num_heads = num_heads if channels % num_heads == 0 else 1
        self.norm = norm(channels)
        self.query = nn.Conv2d(channels, channels, 1)
        if context_dim is None:
            self.key_value = nn.Conv2d(channels, 2 * channels, 1)
        else:
            self.key_value = nn.Linear(context_dim, 2 * channels)
        self.out = zero_init(nn.Conv2d(channels, channels, 1))
        self.cross = context_dim is not None

    def _heads(self, tokens):  # (B, L, C) -> (B, heads, L, C/heads)
        b, length, c = tokens.shape
        return tokens.reshape(b, length, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, x, context=None):
        b, c, h, w = x.shape
        normed = self.norm(x)
        query = self.query(normed).flatten(2).transpose(1, 2)
        if self.cross:
            key, value = self.key_value(context).chunk(2, dim=-1)
        else:
            key, value = self.key_value(normed).flatten(2).transpose(1, 2).chunk(2, dim=-1)
        attended = F.scaled_dot_product_attention(self._heads(query), self._heads(key), self._heads(value))
        attended = attended.transpose(1, 2).reshape(b, h * w, c).transpose(1, 2).reshape(b, c, h, w)
        return x + self.out(attended)


class Stage(nn.Module):
    """A resolution's blocks: ResBlock, then self-attention and cross-attention where enabled."""

    def __init__(self, in_channels, out_channels, temb_channels, dropout, attend, num_heads, context_dim):
        super().__init__()
        self.res = ResBlock(in_channels, out_channels, temb_channels, dropout)
        self.attn = Attention(out_channels, num_heads) if attend else None
        self.cross = Attention(out_channels, num_heads, context_dim) if attend and context_dim else None

    def forward(self, x, temb, context):
        x = self.res(x, temb)
        if self.attn is not None:
            x = self.attn(x)
        if self.cross is not None:
            x = self.cross(x, context)
        return x


class ScoreNet(nn.Module):
    """ε_θ(x_t, t[, cond, context]) for x of shape (B, in_channels, image_size, image_size).

    Args:
        channels: base width; level i has channels·channel_mult[i].
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attn_resolutions: spatial sizes with attention (the middle block always attends).
        cond_channels: channels of a tensor concatenated to the input ("concat" conditioning).
        context_dim: width of cross-attention context tokens ("crossattn" conditioning).
        context_in_time: also add a linear map of the mean context token to the time embedding, so that the
            condition reaches every residual block (ADM's class embedding), not only the attention layers.
        time_scale: t ∈ [0, 1] is embedded as time_scale·t (1000 puts t = i/T on DDPM's step scale).
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        channels: int = 64,
        channel_mult=(1, 2),
        num_res_blocks: int = 2,
        attn_resolutions=(4,),
        dropout: float = 0.1,
        num_heads: int = 4,
        cond_channels: int = 0,
        context_dim: int | None = None,
        context_in_time: bool = False,
        time_scale: float = 1000.0,
    ):
        super().__init__()
        factor = 2 ** (len(channel_mult) - 1)
        if image_size % factor:
            raise ValueError(f"image_size {image_size} must be divisible by 2^(levels−1) = {factor}")
        self.in_channels, self.image_size = in_channels, image_size
        self.cond_channels, self.context_dim, self.time_scale = cond_channels, context_dim, time_scale
        temb_channels = 4 * channels
        self.temb = nn.Sequential(nn.Linear(channels, temb_channels), nn.SiLU(),
                                  nn.Linear(temb_channels, temb_channels))
        if context_in_time and context_dim is None:
            raise ValueError("context_in_time needs context tokens (context_dim): a class condition")
        self.context_temb = nn.Linear(context_dim, temb_channels) if context_in_time else None
        self.base_channels = channels
        self.conv_in = nn.Conv2d(in_channels + cond_channels, channels, 3, padding=1)
        stage = lambda cin, cout, attend: Stage(  # noqa: E731
            cin, cout, temb_channels, dropout, attend, num_heads, context_dim)

        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skip_channels, current, resolution = [channels], channels, image_size
        for level, mult in enumerate(channel_mult):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(stage(current, channels * mult, resolution in attn_resolutions))
                current = channels * mult
                skip_channels.append(current)
            self.down.append(blocks)
            last = level == len(channel_mult) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(current, current, 3, stride=2, padding=1))
            if not last:
                skip_channels.append(current)
                resolution //= 2

        self.mid = nn.ModuleList([stage(current, current, True), ResBlock(current, current, temb_channels, dropout)])

        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(stage(current + skip_channels.pop(), channels * mult, resolution in attn_resolutions))
                current = channels * mult
            self.up.append(blocks)
            first = level == 0
            self.upsample.append(nn.Identity() if first else nn.Conv2d(current, current, 3, padding=1))
            if not first:
                resolution *= 2
        self.out = nn.Sequential(norm(current), nn.SiLU(), zero_init(nn.Conv2d(current, in_channels, 3, padding=1)))

    def forward(self, x, t, cond=None, context=None):
        if x.shape[1:] != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(f"ScoreNet expects (B, {self.in_channels}, {self.image_size}, {self.image_size}), "
                             f"got {tuple(x.shape)}")
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        temb = self.temb(timestep_embedding(t, self.base_channels, self.time_scale))
        if self.context_temb is not None:
            if context is None:
                raise ValueError("this network adds its context to the time embedding: give context")
            temb = temb + self.context_temb(context.mean(1))
        if self.cond_channels:
            x = torch.cat([x, cond], dim=1)
        h = self.conv_in(x)
        skips = [h]
        for blocks, downsample in zip(self.down, self.downsample):
            for block in blocks:
                h = block(h, temb, context)
                skips.append(h)
            if not isinstance(downsample, nn.Identity):
                h = downsample(h)
                skips.append(h)
        h = self.mid[1](self.mid[0](h, temb, context), temb)
        for blocks, upsample in zip(self.up, self.upsample):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), temb, context)
            if not isinstance(upsample, nn.Identity):
                h = upsample(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(h)
