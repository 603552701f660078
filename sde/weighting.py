"""How diffusion time is drawn and weighted in denoising score matching (LSGM §3.2, App. C).

A DSM objective is ∫_{t_ε}^1 w(t) L(t) dt with L(t) = E‖ε − ε̂(x_t, t)‖², for a weighting w:
    likelihood   w_ll(t) = g²(t)/(2σ²_t)       (−ELBO / cross-entropy; "ll"; VP: β/(2σ²))
    unweighted   w(t) = 1                        (L_simple; "drop_all")
    reweighted   w(t) = g²(t)/2 = σ²_t w_ll(t)   ("drop_sigma2t"; VP: β/2)
A scheme draws t from a proposal r(t) on [t_ε, 1] and returns the importance weights w(t)/r(t)
(for the objective it names) and w_ll(t)/r(t) (the same samples reweighted to the likelihood,
which the VAE's update needs). Either way E_r[weight · L(t)] = ∫ w L dt exactly. Proposals:
    uniform      r = 1/(1 − t_ε)
    log-var      log σ²_t uniform:  r = (d log σ²/dt)/(log σ²_1 − log σ²_ε) = β(1 − σ²)/(σ² Λ)
    var          σ²_t uniform:      r = β(1 − σ²)/(σ²_1 − σ²_ε)
    alpha-bar    r ∝ 1 − σ²_t, drawn by inverting its CDF (closed-form integral + Newton)
The names are LSGM's `iw_sample_p` modes.

Support: the weightings and the uniform proposal (`ll_uniform`, `drop_all_uniform`, `drop_sigma2t_uniform`)
hold for every `sde.base.SDE`. The three importance-sampled proposals (`ll_iw`, `drop_all_iw`,
`drop_sigma2t_iw`) invert the VP-SDE's closed forms (σ²_t ↦ t, ∫ᾱ) and take a `VPSDE` only; `sample_time`
refuses them for other SDEs with a ValueError naming both (`supported_schemes` lists what an SDE takes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import SDE
from .vp import VPSDE

# scheme name -> (objective weighting, proposal)
SCHEMES = {
    "ll_uniform": ("likelihood", "uniform"),
    "ll_iw": ("likelihood", "log_var"),
    "drop_all_uniform": ("unweighted", "uniform"),
    "drop_all_iw": ("unweighted", "alpha_bar"),
    "drop_sigma2t_uniform": ("reweighted", "uniform"),
    "drop_sigma2t_iw": ("reweighted", "var"),
}
GENERIC_PROPOSALS = ("uniform",)  # the proposals every SDE supports; the others need a VPSDE


def supported_schemes(sde: SDE) -> list[str]:
    """The names of SCHEMES that `sample_time` accepts for this SDE."""
    return [name for name, (_, proposal) in SCHEMES.items() if proposal in GENERIC_PROPOSALS or isinstance(sde, VPSDE)]


@dataclass
class TimeSample:
    """t (B,), the weight of the scheme's own objective and the weight of the likelihood objective."""

    t: torch.Tensor
    weight: torch.Tensor
    weight_ll: torch.Tensor


def likelihood_weight(sde: SDE, t64: torch.Tensor) -> torch.Tensor:
    """w_ll(t) = g²(t)/(2σ²_t) (t in float64)."""
    coefficients = sde.coefficients(t64)
    return coefficients.diffusion_squared / (2 * coefficients.std**2)


def objective_weight(sde: SDE, objective: str, t64: torch.Tensor) -> torch.Tensor:
    """w(t) of the named objective: likelihood g²/(2σ²), unweighted 1, reweighted g²/2 (t in float64)."""
    if objective == "likelihood":
        return likelihood_weight(sde, t64)
    if objective == "unweighted":
        return torch.ones_like(t64)
    if objective == "reweighted":
        return sde.coefficients(t64).diffusion_squared / 2
    raise ValueError(f"unknown objective {objective!r}; valid: likelihood, unweighted, reweighted")


def _invert_concave(fn, derivative, target: torch.Tensor, lo: float, iterations: int = 60) -> torch.Tensor:
    """Solve fn(t) = target for an increasing concave fn by Newton's method started at t = lo.

    Concavity keeps every Newton iterate at or left of the root (the tangent lies above the graph),
    so the iteration increases monotonically to it; it stops once the residual is at float64 resolution.
    """
    t = torch.full_like(target, lo)
    tolerance = 8 * torch.finfo(torch.float64).eps * target.abs().max()
    for _ in range(iterations):
        residual = target - fn(t)
        if residual.abs().max() <= tolerance:
            break
        t = t + residual / derivative(t)
    return t


def _draw_uniform(u: torch.Tensor, t_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """t = t_eps + u(1 − t_eps), r = 1/(1 − t_eps)."""
    return t_eps + u * (1 - t_eps), torch.full_like(u, 1 / (1 - t_eps))


def _draw_vp(sde: VPSDE, proposal: str, u: torch.Tensor, t_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Map uniforms u ∈ [0, 1) to t ~ r on [t_eps, 1] for VP's proposals, with dσ²/dt = β(1 − σ²); (t, r(t))."""
    bounds = torch.tensor([t_eps, 1.0], dtype=torch.float64)
    var_eps, var_1 = sde.var(bounds)
    if proposal == "log_var":
        log_span = torch.log(var_1) - torch.log(var_eps)
        var = var_eps * torch.exp(u * log_span)
        t = sde.inv_var(var)
        return t, sde.beta(t) * (1 - var) / (var * log_span)
    if proposal == "var":
        var = var_eps + u * (var_1 - var_eps)
        t = sde.inv_var(var)
        return t, sde.beta(t) * (1 - var) / (var_1 - var_eps)
    a_eps, a_1 = sde.alpha_bar_integral(bounds)  # proposal "alpha_bar": r = ᾱ(t)/∫ᾱ, dA/dt = ᾱ decreasing
    t = _invert_concave(sde.alpha_bar_integral, sde.alpha_bar, a_eps + u * (a_1 - a_eps), t_eps)
    return t, sde.alpha_bar(t) / (a_1 - a_eps)


def sample_time(
    sde: SDE,
    scheme: str,
    batch_size: int,
    t_eps: float = 1e-2,
    generator: torch.Generator | None = None,
    device=None,
    dtype=torch.float32,
) -> TimeSample:
    """Draw t for a batch with `scheme` ∈ SCHEMES; E[weight·L(t)] = ∫_{t_eps}^1 w(t) L(t) dt for the scheme's w.

    `t_eps` is LSGM's `time_eps` (1e-2 for training). The alias `uniform` is `drop_all_uniform` (L_simple).
    The importance-sampled schemes take a VPSDE only (module docstring).
    """
    scheme = "drop_all_uniform" if scheme == "uniform" else scheme
    if scheme not in SCHEMES:
        raise ValueError(f"unknown time-sampling scheme {scheme!r}; valid: {sorted(SCHEMES) + ['uniform']}")
    if scheme not in supported_schemes(sde):
        raise ValueError(f"the time-sampling scheme {scheme!r} needs the VP-SDE's closed forms; {sde!r} supports "
                         f"{', '.join(supported_schemes(sde))}")
    if not 0 < t_eps < 1:
        raise ValueError(f"t_eps must lie in (0, 1), got {t_eps}")
    objective, proposal = SCHEMES[scheme]
    u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
    t, density = _draw_uniform(u, t_eps) if proposal == "uniform" else _draw_vp(sde, proposal, u, t_eps)
    t = t.clamp(t_eps, 1.0)
    weight = objective_weight(sde, objective, t) / density
    weight_ll = likelihood_weight(sde, t) / density
    return TimeSample(*(v.to(device=device, dtype=dtype) for v in (t, weight, weight_ll)))
