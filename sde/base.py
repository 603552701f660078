"""The interface every diffusion SDE of this package implements (score_sde's `sde_lib.SDE`, without its shapes).

A linear-Gaussian SDE on t ∈ [0, T], T = 1,

    dx = f(t) x dt + g(t) dW,    q(x_t | x_0) = N(m_t x_0, σ²_t I),    prior N(0, prior_std² I),

is fixed by four functions of t: the drift coefficient f(t), the squared diffusion g²(t), the mean coefficient
m_t = exp(∫_0^t f) and the variance σ²_t, tied by dσ²/dt = 2f σ² + g². Everything a sampler or a likelihood
needs follows from them and from the log signal-to-noise ratio λ(t) = log(m²_t/σ²_t) (decreasing) with its
inverse. With a network's noise prediction ε(x, t) (score = −ε/σ_t):

    probability-flow drift   f x − ½g² ∇log p_t = f x + ½g² ε/σ
    reverse-SDE drift        f x − g² ∇log p_t  = f x + g² ε/σ
    Tweedie's denoised x̂_0   (x − σ ε)/m

A subclass implements the five float64 functions `_log_mean_coeff`, `_var`, `_drift_coeff`,
`_diffusion_squared`, `_time_of_log_snr` (float64 tensors in, float64 out, no validation) and sets `prior_std`.
The public methods validate t, compute in float64 and return t's dtype (float32 for Python numbers); t is a
number or a tensor of any shape, x any shape (B, ...) with t of shape (B,) or scalar. Solvers, which call the
SDE at every step and must not wait on the device for validation, use `coefficients` instead.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import NamedTuple

import torch


def as_time(t, reference: torch.Tensor | None = None) -> torch.Tensor:
    """t as a tensor (on the reference's device, in its floating dtype or float32), checked to lie in [0, 1]."""
    if not torch.is_tensor(t):
        dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
        device = reference.device if reference is not None else None
        t = torch.tensor(t, dtype=dtype, device=device)
    if not t.is_floating_point():
        raise ValueError(f"time must be a floating tensor in [0, 1], got dtype {t.dtype}")
    if t.numel() and bool(((t < 0) | (t > 1) | ~torch.isfinite(t)).any()):
        raise ValueError(f"time must lie in [0, 1]; got values in [{t.min().item()}, {t.max().item()}]")
    return t


def expand_like(coefficient: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample coefficient (B,) (or a scalar) to broadcast against x of shape (B, ...)."""
    if coefficient.dim() == 0:
        return coefficient
    return coefficient.reshape(coefficient.shape + (1,) * (x.dim() - coefficient.dim()))


class Coefficients(NamedTuple):
    """The SDE at one time t, float64: m_t, σ_t, f(t), g²(t); and the maps from a noise prediction ε.

    The fields are 0-d (or per-sample, then `expand_like` them first) tensors, or Python floats (a solver's
    precomputed table, `solvers.GridCoefficients`); the maps broadcast over x.
    """

    mean_coeff: torch.Tensor
    std: torch.Tensor
    drift_coeff: torch.Tensor
    diffusion_squared: torch.Tensor

    def flow_drift(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The probability-flow ODE's dx/dt = f x − ½g²∇log p_t = f x + ½g² ε/σ (Song et al. 2021, eq. 13)."""
        return self.drift_coeff * x + (0.5 * self.diffusion_squared / self.std) * eps

    def flow_divergence(self, dim: int, eps_divergence: torch.Tensor) -> torch.Tensor:
        """∇·(dx/dt) = D f + ½g² ∇·ε/σ, from ∇·ε (B,) in D dimensions."""
        return dim * self.drift_coeff + (0.5 * self.diffusion_squared / self.std) * eps_divergence

    def reverse_drift(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The reverse-time SDE's drift f x − g²∇log p_t = f x + g² ε/σ (Song et al. 2021, eq. 6; dt < 0)."""
        return self.drift_coeff * x + (self.diffusion_squared / self.std) * eps

    def x0_from_eps(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Tweedie's denoised estimate x̂_0 = E[x_0 | x_t] = (x − σ ε)/m."""
        return (x - self.std * eps) / self.mean_coeff


class SDE(ABC):
    """A linear-Gaussian diffusion dx = f(t) x dt + g(t) dW on [0, T] (module docstring)."""

    T: float = 1.0
    prior_std: float = 1.0

    # --- the maths a subclass implements: float64 tensors in and out, t in [0, T], no validation ---------------
    @abstractmethod
    def _log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """log m_t = ∫_0^t f(s) ds."""

    @abstractmethod
    def _var(self, t: torch.Tensor) -> torch.Tensor:
        """σ²_t, accurate relative to itself as t → 0."""

    @abstractmethod
    def _drift_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """f(t), the drift being f(t) x."""

    @abstractmethod
    def _diffusion_squared(self, t: torch.Tensor) -> torch.Tensor:
        """g²(t)."""

    @abstractmethod
    def _time_of_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        """The t with λ(t) = log_snr (λ decreasing in t)."""

    def _log_snr(self, t: torch.Tensor) -> torch.Tensor:
        return 2 * self._log_mean_coeff(t) - torch.log(self._var(t))

    # --- for solvers: float64, unvalidated --------------------------------------------------------------------
    def coefficients(self, t: torch.Tensor) -> Coefficients:
        """(m_t, σ_t, f(t), g²(t)) in float64 at a solver's time t (a tensor already inside [0, T]: not validated,
        so that no step waits on the device)."""
        t = t.double()
        return Coefficients(torch.exp(self._log_mean_coeff(t)), self._var(t).sqrt(), self._drift_coeff(t),
                            self._diffusion_squared(t))

    # --- validated, float64 inside, t's dtype out ---------------------------------------------------------------
    def _apply(self, fn, t) -> torch.Tensor:
        t = as_time(t)
        return fn(t.double()).to(t.dtype)

    def marginal(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(m_t, σ_t) of q(x_t | x_0) = N(m_t x_0, σ²_t I)."""
        mean_coeff = self._apply(lambda s: torch.exp(self._log_mean_coeff(s)), t)
        return mean_coeff, self._apply(lambda s: self._var(s).sqrt(), t)

    def var(self, t) -> torch.Tensor:
        """σ²_t."""
        return self._apply(self._var, t)

    def log_snr(self, t) -> torch.Tensor:
        """λ(t) = log(m²_t/σ²_t), decreasing from +∞ at t = 0 (where σ_0 = 0)."""
        return self._apply(self._log_snr, t)

    def time_of_log_snr(self, log_snr) -> torch.Tensor:
        """The inverse of `log_snr`: t with λ(t) = log_snr, clamped to [0, T] (float64 inside, input's dtype out)."""
        log_snr = torch.as_tensor(log_snr, dtype=torch.float32) if not torch.is_tensor(log_snr) else log_snr
        if bool(torch.isnan(log_snr).any()):
            raise ValueError("log-SNR must not be NaN")
        return self._time_of_log_snr(log_snr.double()).clamp(0, self.T).to(log_snr.dtype)

    def drift(self, x: torch.Tensor, t) -> torch.Tensor:
        """f(x, t) = f(t) x."""
        return expand_like(self._apply(self._drift_coeff, as_time(t, x)), x) * x

    def diffusion(self, t) -> torch.Tensor:
        """g(t)."""
        return self._apply(lambda s: self._diffusion_squared(s).sqrt(), t)

    def perturb(self, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """x_t = m_t x_0 + σ_t ε."""
        mean_coeff, std = self.marginal(as_time(t, x0))
        return expand_like(mean_coeff, x0) * x0 + expand_like(std, x0) * noise

    # --- prior ----------------------------------------------------------------------------------------------------
    def prior_sample(self, shape, generator: torch.Generator | None = None, device=None, dtype=None) -> torch.Tensor:
        """x_T ~ N(0, prior_std² I), the prior the reverse process starts from."""
        return self.prior_std * torch.randn(shape, generator=generator, device=device, dtype=dtype)

    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, s²I) summed over all but the batch dimension, s = prior_std: −½(D log 2πs² + ‖z‖²/s²)."""
        flat = z.reshape(z.shape[0], -1)
        variance = self.prior_std**2
        return -0.5 * (flat.shape[1] * math.log(2 * math.pi * variance) + flat.pow(2).sum(1) / variance)

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """`prior_log_prob` under its earlier name."""
        return self.prior_log_prob(z)
