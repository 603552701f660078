"""The discrete chain an application runs a model on, and the single steps taken along it.

A model's chain is its own DDPM schedule (`model.schedule`, discrete models) or its VP-SDE discretised to
T = 1000 steps (`model.sde.discretize(1000)`, continuous models); the network sees step i as t = i/T.
`respace` keeps K of the T steps, as improved DDPM's timestep respacing (which RePaint uses to run 250 steps
of a 1000-step model): with kept steps τ_1 < … < τ_K = T (evenly spaced, τ_1 = 1),

    ᾱ'_k = ᾱ_{τ_k},   β'_k = 1 − ᾱ_{τ_k}/ᾱ_{τ_{k−1}}  (ᾱ_{τ_0} = 1),

so that q(x_k | x_0) of the short chain is q(x_{τ_k} | x_0) of the long one, and step k calls the model at
t = τ_k/T. K = T gives the chain itself.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from sde import DDPMSchedule
from sde.sampling import ddim_timesteps

CONTINUOUS_STEPS = 1000


@dataclass(frozen=True)
class Chain:
    """A DDPM `schedule` over steps k = 1..K and the model's continuous time τ_k/T of each step (`times`)."""

    schedule: DDPMSchedule
    times: tuple[float, ...]

    @property
    def T(self) -> int:
        return self.schedule.T

    def eps(self, eps_fn, x: torch.Tensor, k: int) -> torch.Tensor:
        """ε of a continuous-time eps_fn(x, t) at step k: eps_fn(x, τ_k/T)."""
        return eps_fn(x, torch.full((x.shape[0],), self.times[k - 1], dtype=x.dtype, device=x.device))


def respace(schedule: DDPMSchedule, steps: int) -> Chain:
    """The chain of `steps` evenly spaced steps of `schedule` (module docstring)."""
    if not 2 <= steps <= schedule.T:
        raise ValueError(f"the number of steps must lie in 2..{schedule.T} (the model's chain), got {steps}")
    kept = sorted(ddim_timesteps(schedule.T, steps))
    alpha_bars = schedule.alpha_bars[torch.tensor(kept) - 1]
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bars[:-1]])
    return Chain(DDPMSchedule(1 - alpha_bars / previous), tuple(k / schedule.T for k in kept))


def model_chain(model, steps: int | None = None) -> Chain:
    """The model's chain (module docstring), respaced to `steps` steps (None: all of them)."""
    schedule = model.chain(CONTINUOUS_STEPS)
    return respace(schedule, schedule.T if steps is None else steps)


def reverse_step(schedule: DDPMSchedule, eps: torch.Tensor, x: torch.Tensor, k: int, noise: torch.Tensor,
                 clip_x0=None) -> torch.Tensor:
    """One ancestral step (DDPM Algorithm 2): x_{k−1} = μ_θ(x_k, k) + σ_k z with σ²_k = β̃_k, and z = 0 at k = 1
    (`DDPMSchedule.p_mean_var`, clipping x̂_0 to `clip_x0` if given)."""
    mean, var, _ = schedule.p_mean_var(eps, x, k, "small", clip_x0)
    return mean if k == 1 else mean + var.sqrt() * noise


def forward_step(schedule: DDPMSchedule, x: torch.Tensor, k: int, noise: torch.Tensor) -> torch.Tensor:
    """One step of the forward chain, a sample of q(x_k | x_{k−1}): x_k = √(1 − β_k) x_{k−1} + √β_k z."""
    beta = schedule.at("betas", k, x)
    return (1 - beta).sqrt() * x + beta.sqrt() * noise


@contextlib.contextmanager
def seeded(seed: int | None):
    """Run the body on torch's global generator seeded with `seed` and restore its state after (no-op for None).

    The applications draw all their noise, the VAE's included, from the global generator, so a seed fixes
    everything they return."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield
