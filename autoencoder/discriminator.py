"""pix2pix's PatchGAN discriminator (NLayerDiscriminator), as latent-diffusion's first stage uses it."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import group_norm

NORMS = ("batch", "group", "none")
MAX_CHANNEL_MULT = 8


def norm_layer(norm: str, channels: int) -> nn.Module:
    """BatchNorm, GroupNorm (gcd(32, channels) groups) or the identity."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return group_norm(channels)
    return nn.Identity()


def patch_logits_size(size: int, layers: int) -> int:
    """The side of the logit map for an input side `size`: every 4×4 conv with padding 1 maps s → (s − 2) // stride
    + 1 (layers stride-2 convs, then two stride-1 convs); 0 when some conv would get a side below 2."""
    for stride in [2] * layers + [1, 1]:
        if size < 2:
            return 0
        size = (size - 2) // stride + 1
    return size


class PatchDiscriminator(nn.Module):
    """x (B, C, H, W) → patch logits (B, 1, H/2^layers − 2, W/2^layers − 2) for even sides: a 4×4 stride-2 conv
    to `channels` + LeakyReLU(0.2); layers − 1 more 4×4 stride-2 convs doubling the channels (at most 8·channels)
    + norm + LeakyReLU; a 4×4 stride-1 conv (doubling again, same cap) + norm + LeakyReLU; a 4×4 stride-1 conv to
    one logit per patch. Padding 1 everywhere; convs followed by a norm have no bias. Conv weights ~ N(0, 0.02),
    norm scales ~ N(1, 0.02) and norm shifts 0 (latent-diffusion's init).

    Args: in_channels: image channels; channels: width of the first conv; layers: stride-2 convs (≥ 1);
        norm: "batch" (pix2pix, latent-diffusion), "group" or "none".
    """

    def __init__(self, in_channels: int = 1, channels: int = 64, layers: int = 3, norm: str = "batch"):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}: use one of {NORMS}")
        if layers < 1:
            raise ValueError(f"a PatchDiscriminator needs layers >= 1, got {layers}")
        self.layers = layers
        bias = norm == "none"
        modules: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for layer in range(1, layers + 1):
            stride = 2 if layer < layers else 1
            next_width = channels * min(2**layer, MAX_CHANNEL_MULT)
            modules += [nn.Conv2d(width, next_width, 4, stride=stride, padding=1, bias=bias),
                        norm_layer(norm, next_width), nn.LeakyReLU(0.2)]
            width = next_width
        modules.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*modules)
        self.apply(initialise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch logits (B, 1, h, w); ValueError when the image is too small for `layers`."""
        if min(patch_logits_size(side, self.layers) for side in x.shape[-2:]) < 1:
            smallest = next(size for size in range(2, 2 ** (self.layers + 3)) if patch_logits_size(size, self.layers))
            raise ValueError(f"images of {tuple(x.shape[-2:])} are too small for a PatchDiscriminator with "
                             f"{self.layers} layers (each side needs at least {smallest}); use fewer layers")
        return self.net(x)


def initialise(module: nn.Module) -> None:
    """Conv weights ~ N(0, 0.02); norm scales ~ N(1, 0.02), norm shifts 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
