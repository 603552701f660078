"""The VAE alone: an `nvae.NVAE` with its own learned hierarchical prior (LSGM's baseline).

It trains on NVAE's objective (KL warm-up and balancing, spectral and norm regularisation), samples ancestrally
from its prior, and its NLL is the importance-weighted bound −log (1/k) Σ_i p(x, z_i)/q(z_i|x).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Losses, LossOptions, data_grid, sample_in_batches
from .latent import vae_stage


class VAEAlone(nn.Module):
    """An `nvae.NVAE` as a model kind of its own (no score model)."""

    kind = "vae"
    condition = None  # unconditional
    has_likelihood = True

    def __init__(self, vae: nn.Module, data_shape=(1, 8, 8), levels: int | None = 17):
        super().__init__()
        self.vae, self.data_shape, self.levels = vae, tuple(data_shape), levels

    def phase(self, step: int, train) -> str:
        return "vae"

    def losses(self, phase: str, x: torch.Tensor, options: LossOptions) -> Losses:
        scalars, loss, _ = vae_stage(self.vae, x, options)
        return Losses(scalars, loss)

    def validation_nats(self, x: torch.Tensor, phase: str, t_eps: float, scheme: str | None = None) -> torch.Tensor:
        """One draw of the VAE's −ELBO per image (nats)."""
        return -self.vae.loss(x)["elbo_nats"]

    @torch.no_grad()
    def nll(self, x: torch.Tensor, k: int = 1, **ode) -> tuple[torch.Tensor, int]:
        """The importance-weighted bound per image (nats) with k samples; no network function evaluations."""
        return self.vae.nll(x, k), 0

    def monitored(self) -> dict:
        return {}

    def to_data_grid(self, x: torch.Tensor) -> torch.Tensor:
        return data_grid(x, self.levels)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, mean: bool = False, y=None,
               generator: torch.Generator | None = None, batch_size: int | None = None,
               output_type: str = "tensor", **unused):
        """n ancestral samples of the VAE's prior on the data's grid, NFE 0, every draw from `generator`, in
        batches and as `output_type` (see `ScoreModel.sample`). A VAE has no sampler: the sampler's name and options
        are accepted, so that every kind samples through one call, and unused."""
        if y is not None:
            raise ValueError("a VAE alone is unconditional: it cannot sample given y")

        def draw(count: int, y_batch):
            return self.to_data_grid(self.vae.sample(count, temperature, mean, generator)), 0

        return sample_in_batches(draw, n, batch_size, None, output_type)
