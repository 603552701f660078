"""Latent-diffusion's first stage: a convolutional autoencoder with downsampling factor f = H/h and a KL- or a
VQ-regularized latent of shape (latent_channels, H/f, W/f)."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from .blocks import Downsample, ResidualBlock, Upsample, group_norm
from .regularizers import DiagonalGaussian, VectorQuantizer, codebook_statistics

REGULARIZERS = ("kl", "vq")


@dataclasses.dataclass
class AutoencoderOutput:
    """One forward pass: the reconstruction x̂ (B, C, H, W); the regularization (scalar: the batch-mean KL, or the
    VQ commitment loss); detached 0-d scalars to log."""

    reconstruction: torch.Tensor
    regularization: torch.Tensor
    scalars: dict[str, torch.Tensor]


def level_widths(channels: int, channel_mult: list[int] | None, levels: int) -> list[int]:
    """Channels at each of the levels + 1 resolutions, channels·channel_mult[i] (default: all 1)."""
    channel_mult = [1] * (levels + 1) if channel_mult is None else list(channel_mult)
    if len(channel_mult) != levels + 1:
        raise ValueError(f"channel_mult needs log2(factor) + 1 = {levels + 1} entries (one per resolution), "
                         f"got {len(channel_mult)}: {channel_mult}")
    return [channels * multiplier for multiplier in channel_mult]


class Encoder(nn.Module):
    """x (B, C, H, W) → (B, out_channels, H/2^m, W/2^m): a 3×3 conv in; at each resolution i = 0..m,
    num_res_blocks residual blocks to widths[i], then (i < m) a stride-2 downsample; GN + SiLU + a 1×1 conv out."""

    def __init__(self, in_channels: int, widths: list[int], num_res_blocks: int, out_channels: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        width = widths[0]
        for level, level_width in enumerate(widths):
            for _ in range(num_res_blocks):
                layers.append(ResidualBlock(width, level_width, dropout))
                width = level_width
            if level < len(widths) - 1:
                layers.append(Downsample(width))
        layers += [group_norm(width), nn.SiLU(), nn.Conv2d(width, out_channels, 1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Decoder(nn.Module):
    """The encoder mirrored, z (B, latent_channels, h, w) → (B, out_channels, h·2^m, w·2^m): a 1×1 conv in; at each
    resolution i = m..0, num_res_blocks residual blocks to widths[i], then (i > 0) a nearest upsample + 3×3 conv;
    GN + SiLU + a 3×3 conv out, unbounded (no tanh, as latent-diffusion)."""

    def __init__(self, latent_channels: int, widths: list[int], num_res_blocks: int, out_channels: int,
                 dropout: float):
        super().__init__()
        width = widths[-1]
        layers: list[nn.Module] = [nn.Conv2d(latent_channels, width, 1)]
        for level in reversed(range(len(widths))):
            for _ in range(num_res_blocks):
                layers.append(ResidualBlock(width, widths[level], dropout))
                width = widths[level]
            if level > 0:
                layers.append(Upsample(width))
        self.layers = nn.Sequential(*layers, group_norm(width), nn.SiLU())
        self.out = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.layers(z))


class Autoencoder(nn.Module):
    """Latent-diffusion's first stage (Rombach et al. 2022) with m = log2 f down/upsamplings.

    KL-reg: the encoder gives the mean and log-variance of q(z|x) = N(mean, σ²) (`DiagonalGaussian`); the
    regularization is KL(q ‖ N(0, I)) summed over latent elements and averaged over the batch. VQ-reg: the encoder
    gives pre-quantization latents h, the decoder sees q = VQ(h) (`VectorQuantizer`, EMA codebook); the
    regularization is the commitment loss β·mean‖h − sg(q)‖².

    Args: in_channels, image_size: images (B, in_channels, image_size, image_size), image_size divisible by f;
        factor: f, a power of two; channels: base width; channel_mult: width multipliers per resolution (m + 1
        entries, default all 1); num_res_blocks: residual blocks per resolution; latent_channels: channels of z;
        regularizer: "kl" or "vq"; codebook_size, commitment, codebook_decay, dead_code_threshold: the VQ's;
        learn_logvar: a learned scalar output log-variance `logvar` (the reconstruction NLL is rec/exp(logvar) +
        logvar; latent-diffusion declares one but never gives it to an optimizer, so it stays 0 there; here it is
        an ordinary parameter that the optimizer updates); dropout: in the residual blocks.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 8, factor: int = 2, channels: int = 64,
                 channel_mult: list[int] | None = None, num_res_blocks: int = 1, latent_channels: int = 3,
                 regularizer: str = "kl", codebook_size: int = 256, commitment: float = 0.25,
                 codebook_decay: float = 0.99, dead_code_threshold: float = 2.0, learn_logvar: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        if factor < 1 or factor & (factor - 1):
            raise ValueError(f"factor must be a power of two (1, 2, 4, 8, ...), got {factor}")
        if image_size % factor:
            raise ValueError(f"image_size {image_size} is not divisible by the factor {factor}")
        if regularizer not in REGULARIZERS:
            raise ValueError(f"unknown regularizer {regularizer!r}: use one of {REGULARIZERS}")
        levels = int(math.log2(factor))
        widths = level_widths(channels, channel_mult, levels)
        self.regularizer = regularizer
        self.latent_shape = (latent_channels, image_size // factor, image_size // factor)
        encoder_channels = 2 * latent_channels if regularizer == "kl" else latent_channels
        self.encoder = Encoder(in_channels, widths, num_res_blocks, encoder_channels, dropout)
        self.decoder = Decoder(latent_channels, widths, num_res_blocks, in_channels, dropout)
        self.quantizer = (VectorQuantizer(latent_channels, codebook_size, commitment, codebook_decay,
                                          dead_code_threshold) if regularizer == "vq" else None)
        self.logvar = nn.Parameter(torch.zeros(())) if learn_logvar else None

    @property
    def last_layer(self) -> torch.Tensor:
        """The weight of the decoder's final conv (for the GAN loss's adaptive weight)."""
        return self.decoder.out.weight

    def encode(self, x: torch.Tensor) -> DiagonalGaussian | torch.Tensor:
        """KL: the posterior q(z|x); VQ: the pre-quantization latents h."""
        moments = self.encoder(x)
        if self.regularizer == "vq":
            return moments
        mean, logvar = moments.chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar)

    def latents(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """What a second-stage diffusion model sees: KL: the posterior mean (sample=True: a sample from
        `generator`); VQ: the pre-quantization h (deterministic, `sample` unused; `decode` quantizes, as
        latent-diffusion does)."""
        encoded = self.encode(x)
        if self.regularizer == "vq":
            return encoded
        return encoded.sample(generator) if sample else encoded.mode()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images from latents: KL: decoder(z); VQ: decoder(quantize(z)) (the codebook does not move)."""
        if self.regularizer == "vq":
            z = self.quantizer.quantize(z)
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> AutoencoderOutput:
        """Reconstruct x: KL: decoder(z), z a posterior sample from `generator`; VQ: decoder(q), q = VQ(h) (in
        train mode the codebook's EMA update)."""
        encoded = self.encode(x)
        if self.regularizer == "kl":
            kl = encoded.kl().mean()
            return AutoencoderOutput(self.decoder(encoded.sample(generator)), kl, {"kl": kl.detach()})
        quantized, indices, commitment = self.quantizer(encoded)
        perplexity, usage = codebook_statistics(indices, self.quantizer.codebook_size)
        scalars = {"vq_commitment": commitment.detach(), "codebook_perplexity": perplexity,
                   "codebook_usage": usage}
        return AutoencoderOutput(self.decoder(quantized), commitment, scalars)
