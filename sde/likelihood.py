"""Log-likelihood through the probability-flow ODE, bits/dim of discrete data, and the ODE encoder/decoder,
for any `sde.base.SDE`.

Along the probability-flow ODE dx/dt = f̃(x, t) = f(t)x + ½g²(t)ε(x, t)/σ_t the density obeys
d log p_t(x_t)/dt = −∇·f̃(x_t, t) (the instantaneous change of variables), so for x = x_{t_eps}

    log p(x) = log π(x_1) + ∫_{t_eps}^1 ∇·f̃(x_t, t) dt,   ∇·f̃ = D f(t) + ½g²(t) ∇·ε/σ_t,

integrated with torchdiffeq (or `rk45`) on the augmented state [x_t, ∫∇·f̃] (Song et al. 2021, App. D). ∇·ε is exact
(one VJP per dimension, batched through vmap: small D only) or Hutchinson's estimate vᵀ(∂ε/∂x)v with a
probe v fixed for one integration and drawn afresh for each repeat (one VJP per call; the repeats are stacked
along the batch and integrated together). π is the SDE's prior.
The integrations run on `uniform_grid(steps or 1, t_eps)` reversed (`solvers.ode_grid`: the two ends for the
adaptive methods, `steps` equal steps for the fixed-step ones).
"""

from __future__ import annotations

import math

import torch

from .base import SDE
from .solvers import CountedModel, FlowField, ProbabilityFlow, batch_time, check_choice, ode_grid, solve_ode

DIVERGENCES = ("hutchinson", "exact")
PROBES = ("rademacher", "gaussian")


class LogLikelihood(tuple):
    """(logp, nfe): log p(x) in nats (B,) and the number of eps_fn calls (on all repeats at once). It unpacks as a
    pair; `.stderr` (B,) is the standard error of logp over the repeats (None for a single integration)."""

    def __new__(cls, logp: torch.Tensor, nfe: int, stderr: torch.Tensor | None = None):
        self = super().__new__(cls, (logp, nfe))
        self.stderr = stderr
        return self

    @property
    def logp(self) -> torch.Tensor:
        return self[0]

    @property
    def nfe(self) -> int:
        return self[1]


def _hutchinson(probe: torch.Tensor):
    """∇·ε ≈ vᵀ(∂ε/∂x)v for a fixed probe v (E[vvᵀ] = I): one VJP."""

    def divergence(eps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        (vjp,) = torch.autograd.grad(eps, x, probe)
        return (vjp * probe).flatten(1).sum(1)

    return divergence


def _exact(x: torch.Tensor):
    """∇·ε = Σ_i eᵢᵀ(∂ε/∂x)eᵢ: D VJPs, batched (`is_grads_batched`) over a basis built once."""
    dim = x[0].numel()
    basis = torch.eye(dim, dtype=x.dtype, device=x.device).reshape(dim, 1, *x.shape[1:]).expand(dim, *x.shape)

    def divergence(eps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        (rows,) = torch.autograd.grad(eps, x, basis, is_grads_batched=True)  # rows[i] = eᵢᵀ ∂ε/∂x, (D, B, ...)
        return rows.flatten(2).diagonal(dim1=0, dim2=2).sum(-1)

    return divergence


class _AugmentedFlow(FlowField):
    """d/dt [x, ℓ] = [f̃(x, t), ∇·f̃(x, t)] with f̃ = f x + ½g² ε/σ and ∇·f̃ = D f + ½g² ∇·ε/σ."""

    def __init__(self, model: CountedModel, sde: SDE, divergence):
        super().__init__(sde)
        self.model, self.divergence = model, divergence

    def __call__(self, t: torch.Tensor | float, state):
        x, _ = state
        coefficients = self.coefficients(t)
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            eps = self.model(x, batch_time(t, x))
            div_eps = self.divergence(eps, x)
        return coefficients.flow_drift(x.detach(), eps.detach()), coefficients.flow_divergence(x[0].numel(), div_eps)


def _probe(x: torch.Tensor, kind: str, generator: torch.Generator | None) -> torch.Tensor:
    if kind == "gaussian":
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1


@torch.no_grad()
def ode_log_likelihood(eps_fn, sde: SDE, x: torch.Tensor, divergence: str = "hutchinson",
                       probe: str = "rademacher", rtol: float = 1e-5, atol: float = 1e-5, t_eps: float = 1e-5,
                       repeats: int = 1, method: str = "dopri5", generator: torch.Generator | None = None,
                       steps: int | None = None) -> LogLikelihood:
    """log p(x) in nats per sample (B,) by the probability-flow ODE (module docstring), x taken at t_eps.

    Returns a `LogLikelihood`: `logp, nfe = ode_log_likelihood(...)`; with Hutchinson and repeats > 1, logp
    is the mean over `repeats` integrations (a fresh probe each) and `.stderr` its standard error. The repeats are
    stacked along the batch and integrated in one solve (eps_fn must take any batch size, as an unconditional one
    does): nfe counts calls on that (repeats · B) batch. Exact divergence is deterministic and takes repeats = 1.
    `steps` is for fixed-step torchdiffeq methods.
    """
    check_choice(divergence, DIVERGENCES, "divergence")
    check_choice(probe, PROBES, "probe")
    if repeats < 1 or (divergence == "exact" and repeats != 1):
        raise ValueError(f"repeats must be >= 1, and 1 for the exact divergence; got {repeats}")
    times = ode_grid(method, steps, t_eps).flip(0)
    model = CountedModel(eps_fn)
    stacked = x.repeat(repeats, *([1] * (x.dim() - 1))) if repeats > 1 else x
    div_fn = _exact(stacked) if divergence == "exact" else _hutchinson(_probe(stacked, probe, generator))
    state = (stacked, stacked.new_zeros(stacked.shape[0]))
    x_1, integral = solve_ode(_AugmentedFlow(model, sde, div_fn), state, times, model, method, rtol, atol)
    estimates = (sde.prior_log_prob(x_1) + integral).view(repeats, x.shape[0])
    logp, _ = model.finish(estimates.mean(0), 1.0)
    stderr = estimates.std(0) / math.sqrt(repeats) if repeats > 1 else None
    return LogLikelihood(logp, model.nfe, stderr)


# --- discrete data: dequantization and bits/dim ------------------------------------------------------------------
def bin_width(levels: int) -> float:
    """Δ = 2/(levels − 1): pixel k ↔ x = kΔ − 1 in [−1, 1], one bin per level."""
    if levels < 2:
        raise ValueError(f"levels must be at least 2, got {levels}")
    return 2.0 / (levels - 1)


def dequantize(x: torch.Tensor, levels: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantization x + uΔ, u ~ U(−½, ½): a continuous point inside x's bin."""
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device) - 0.5
    return x + u * bin_width(levels)


def bits_per_dim(nll_nats: torch.Tensor, dim: int, levels: int) -> torch.Tensor:
    """Bits per dimension of discrete data from the negative log density (nats) of its dequantized values in [−1, 1].

    A bin's probability is ≥ exp E[log p] · Δ^D (Jensen over the dequantization), so
        bpd = −log₂ P / D ≤ nll/(D ln 2) − log₂ Δ = nll/(D ln 2) + log₂((levels − 1)/2),
    the offset being log₂ 127.5 ≈ 6.99 for 256 levels (score_sde adds 7 with bins of width 2/256).
    """
    return nll_nats / (dim * math.log(2)) + math.log2((levels - 1) / 2)


def ode_bits_per_dim(eps_fn, sde: SDE, x: torch.Tensor, levels: int, generator: torch.Generator | None = None,
                     **options) -> LogLikelihood:
    """bits/dim (B,) of discrete data x in [−1, 1]: dequantize, `ode_log_likelihood`, `bits_per_dim`.
    Returns (bpd, nfe) as a `LogLikelihood` whose `.stderr` is in bits/dim."""
    logp, nfe = result = ode_log_likelihood(eps_fn, sde, dequantize(x, levels, generator), generator=generator,
                                            **options)
    dim = x[0].numel()
    stderr = None if result.stderr is None else result.stderr / (dim * math.log(2))
    return LogLikelihood(bits_per_dim(-logp, dim, levels), nfe, stderr)


# --- the ODE as an encoder/decoder -----------------------------------------------------------------------------
def _flow(eps_fn, sde: SDE, x: torch.Tensor, times: torch.Tensor, method: str, rtol: float, atol: float):
    model = CountedModel(eps_fn)
    return model.finish(solve_ode(ProbabilityFlow(model, sde), x, times, model, method, rtol, atol), float(times[-1]))


@torch.no_grad()
def ode_encode(eps_fn, sde: SDE, x: torch.Tensor, method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
               t_eps: float = 1e-5, steps: int | None = None):
    """z = x_1, the probability-flow ODE integrated from x at t_eps to t = 1 (the inverse of `ode_decode`).
    Returns (z, nfe)."""
    return _flow(eps_fn, sde, x, ode_grid(method, steps, t_eps).flip(0), method, rtol, atol)


@torch.no_grad()
def ode_decode(eps_fn, sde: SDE, z: torch.Tensor, method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
               t_eps: float = 1e-5, steps: int | None = None):
    """x = x_{t_eps}, the probability-flow ODE integrated from z at t = 1 down to t_eps (`sample_ode` without
    denoising). Returns (x, nfe)."""
    return _flow(eps_fn, sde, z, ode_grid(method, steps, t_eps), method, rtol, atol)
