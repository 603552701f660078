"""Time grids for the continuous samplers: decreasing 1-D float64 tensors from T (= 1) to t_eps.

A sampler steps from grid[0] to grid[-1] through every point; the grid is data, separate from the solver
(k-diffusion's `get_sigmas_*`). `steps` counts intervals, so a grid has steps + 1 points, both ends exact.

    uniform_grid     t_i = T − i (T − t_eps)/N                              (score_sde; sde, pc, fixed-step ode)
    quadratic_grid   √t_i uniform                                            (DPM-Solver's "time_quadratic")
    log_snr_grid     λ(t_i) uniform, λ = log(m²/σ²)                          (DPM-Solver's "logSNR")
    edm_grid         σ̃_i^{1/ρ} uniform, σ̃ = σ/m = e^{−λ/2}  (Karras et al. 2022, eq. 5)   (heun, dpm2m)
"""

from __future__ import annotations

import torch

from .base import SDE


def _check(steps: int, t_eps: float, T: float) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not 0 < t_eps < T:
        raise ValueError(f"need 0 < t_eps < T, got t_eps = {t_eps}, T = {T}")


def _with_exact_ends(times: torch.Tensor, t_eps: float, T: float) -> torch.Tensor:
    times[0], times[-1] = T, t_eps
    return times


def uniform_grid(steps: int, t_eps: float, T: float = 1.0) -> torch.Tensor:
    """t_i = T − i(T − t_eps)/steps, i = 0..steps."""
    _check(steps, t_eps, T)
    return torch.linspace(T, t_eps, steps + 1, dtype=torch.float64)


def quadratic_grid(steps: int, t_eps: float, T: float = 1.0) -> torch.Tensor:
    """t_i = (√T − i(√T − √t_eps)/steps)²: denser near t_eps."""
    _check(steps, t_eps, T)
    times = torch.linspace(T**0.5, t_eps**0.5, steps + 1, dtype=torch.float64) ** 2
    return _with_exact_ends(times, t_eps, T)


def log_snr_grid(sde: SDE, steps: int, t_eps: float, T: float = 1.0) -> torch.Tensor:
    """λ(t_i) = λ(T) + i(λ(t_eps) − λ(T))/steps, mapped back by `sde.time_of_log_snr`."""
    _check(steps, t_eps, T)
    ends = sde.log_snr(torch.tensor([T, t_eps], dtype=torch.float64))
    times = sde.time_of_log_snr(torch.linspace(float(ends[0]), float(ends[1]), steps + 1, dtype=torch.float64))
    return _with_exact_ends(times, t_eps, T)


def edm_grid(sde: SDE, steps: int, t_eps: float, rho: float = 7.0, T: float = 1.0) -> torch.Tensor:
    """EDM's ρ-spacing of σ̃_t = σ_t/m_t (Karras et al. 2022, eq. 5) from σ̃_max = σ̃_T to σ̃_min = σ̃_{t_eps}:

        σ̃_i = (σ̃_max^{1/ρ} + i/N (σ̃_min^{1/ρ} − σ̃_max^{1/ρ}))^ρ,   t_i = time_of_log_snr(−2 log σ̃_i).
    """
    _check(steps, t_eps, T)
    inv_rho = torch.exp(-sde.log_snr(torch.tensor([T, t_eps], dtype=torch.float64)) / (2 * rho))  # σ̃^{1/ρ}
    ramp = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    sigma = (inv_rho[0] + ramp * (inv_rho[1] - inv_rho[0])) ** rho
    return _with_exact_ends(sde.time_of_log_snr(-2 * torch.log(sigma)), t_eps, T)


def check_grid(times, T: float = 1.0) -> torch.Tensor:
    """times as a float64 tensor, checked to be a strictly decreasing 1-D grid inside (0, T] with ≥ 2 points."""
    times = torch.as_tensor(times, dtype=torch.float64)
    if times.dim() != 1 or times.numel() < 2:
        raise ValueError(f"a time grid is a 1-D tensor of at least 2 times, got shape {tuple(times.shape)}")
    if not bool((times[1:] < times[:-1]).all()) or not 0 < float(times[-1]) or float(times[0]) > T:
        raise ValueError(f"a time grid must decrease strictly from at most T = {T} to above 0, got {times.tolist()}")
    return times
