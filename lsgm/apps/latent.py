"""Between images and the space the score model lives in: the VAE's top-scale latents, or the pixels.

`encode` gives the posterior mean of the top-scale groups, concatenated (the image itself in pixel space).
`decoder` gives p(x | z) with the VAE's lower groups at their prior means (temperature 0), so that an
image is a deterministic, differentiable function of the top latents; `decode` is its mean (the latent
itself in pixel space). Callers put the result on the data grid (`model.to_data_grid`).
"""

from __future__ import annotations

import torch


def encode(model, x: torch.Tensor) -> torch.Tensor:
    """The posterior mean of the top latents of images x (x itself for a pixel-space model)."""
    if model.vae is None:
        return x
    return model.vae.concat_top(model.vae.encode(x).mu)


def decoder(model, z: torch.Tensor):
    """p(x | z) of a latent model, its lower groups at their conditional prior means."""
    vae = model.vae
    groups = vae.split_top(z) + [None] * (len(vae.group_shapes) - vae.num_top_groups)
    return vae.decode(groups, temperature=0.0)


def decode(model, z: torch.Tensor) -> torch.Tensor:
    """Images from top latents: the mean of `decoder(model, z)` (z itself for a pixel-space model)."""
    return z if model.vae is None else decoder(model, z).mean()
