"""Score models in pixel space: a continuous-time SGM and DDPM's discrete chain (the latent is the image).

NLL bounds per image:
    pixel SGM   −log P(x) ≤ E_u[−log p_ODE(x + u)] − D log Δ, u ~ U(−Δ/2, Δ/2)^D, Δ = 2/(levels − 1);
    DDPM        its variational bound L_T + Σ_t L_{t−1} + L_0 with the discrete decoder (T network calls).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sde import vlb
from sde.likelihood import bin_width, dequantize, ode_bits_per_dim

from ..objective import cross_entropy, denoising_terms, simple_loss
from .base import Losses, LossOptions, ScoreModel, ode_options


class PixelSGM(ScoreModel):
    """A continuous-time score model of the images themselves (`ScoreModel` with `latent_shape = data_shape`)."""

    kind = "pixel"

    def __init__(self, score_net: nn.Module, sde, data_shape=(1, 8, 8), levels: int | None = 17,
                 mixing_logit_init: float = -3.0, mixed: bool = True, condition: nn.Module | None = None,
                 residual: bool = False):
        super().__init__(score_net, sde, data_shape, data_shape, levels, mixing_logit_init, mixed, condition,
                         residual)

    def phase(self, step: int, train) -> str:
        """The score model alone, every step."""
        return "score"

    def score_loss(self, x: torch.Tensor, options: LossOptions) -> torch.Tensor:
        """Per-image DSM w(t)/r(t)·‖ε − ε̂‖² with the `scheme_p` weighting (B,)."""
        return denoising_terms(self, x, options.scheme_p, options.t_eps, options.inputs).objective()

    def losses(self, phase: str, x: torch.Tensor, options: LossOptions) -> Losses:
        loss = self.score_loss(x, options).mean()
        return Losses({"loss_score": loss.detach()}, None, loss)

    def validation_nats(self, x: torch.Tensor, phase: str, t_eps: float, scheme: str | None = None) -> torch.Tensor:
        """One draw of the DSM cross-entropy of uniformly dequantized data minus D log Δ per image (nats), with
        time sampling `scheme` (default `likelihood_scheme`)."""
        dequantized = dequantize(x, self.levels)
        terms = denoising_terms(self, dequantized, scheme or self.likelihood_scheme, t_eps)
        return cross_entropy(self, terms, dequantized, t_eps) - x[0].numel() * math.log(bin_width(self.levels))

    @torch.no_grad()
    def nll(self, x: torch.Tensor, k: int = 1, **ode) -> tuple[torch.Tensor, int]:
        """−log P(x) bound per image (nats): the ODE likelihood of uniformly dequantized data (k is unused: one
        dequantization draw), and the ODE's function evaluations."""
        bits, nfe = ode_bits_per_dim(self.eps_fn(), self.sde, x, self.levels, **ode_options(ode))
        return bits * x[0].numel() * math.log(2), nfe

    @torch.no_grad()
    def diffusion_bound(self, x: torch.Tensor, T: int = 1000, num_steps: int | None = None, batch_size: int = 1024,
                        generator: torch.Generator | None = None, on_chunk=None):
        """L = L_T + Σ L_{t−1} + L_0 on the model's chain, with a Gaussian decoder discretised to the data's levels:
        the summary (bits/dim) and the rate–distortion table."""
        schedule = self.chain(T)
        bound = vlb.variational_bound(self.discrete_eps_fn(schedule), schedule, x, self.levels, num_steps=num_steps,
                                      batch_size=batch_size, generator=generator, on_chunk=on_chunk)
        return bound.summary(), bound.rate_distortion()


class DDPM(PixelSGM):
    """DDPM (Ho et al. 2020): the VP-SDE discretised to `steps` steps, trained with L_simple, no mixed score.

    The network sees step i as t = i/T, so the continuous-time samplers run on it too.
    """

    kind = "ddpm"

    def __init__(self, score_net: nn.Module, sde, steps: int = 1000, data_shape=(1, 8, 8), levels: int | None = 17,
                 condition: nn.Module | None = None):
        super().__init__(score_net, sde, data_shape, levels, mixed=False, condition=condition)
        self.schedule = sde.discretize(steps)
        self.sample_steps = steps

    def chain(self, T: int = 1000):
        """The model's own chain (T is ignored: the chain has the length it was trained with)."""
        return self.schedule

    def score_loss(self, x: torch.Tensor, options: LossOptions) -> torch.Tensor:
        """L_simple per image (B,), `lsgm.objective.simple_loss`."""
        return simple_loss(self, self.schedule, x, options.inputs)

    def validation_nats(self, x: torch.Tensor, phase: str, t_eps: float, scheme: str | None = None) -> torch.Tensor:
        """L_simple per image (a loss, not a bound: model selection only)."""
        return simple_loss(self, self.schedule, x)

    @torch.no_grad()
    def nll(self, x: torch.Tensor, k: int = 1, **ode) -> tuple[torch.Tensor, int]:
        """DDPM's own bound L_T + Σ L_t + L_0 per image (nats; no ODE: `ode` options are unused), T network calls."""
        bound = vlb.variational_bound(self.discrete_eps_fn(self.schedule), self.schedule, x, self.levels)
        return bound.total.float(), self.schedule.T
