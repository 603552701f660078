"""The variance-exploding SDE (SMLD in continuous time; Song et al. 2021, eq. 9 and App. C).

    dx = √(dσ²(t)/dt) dW,    σ(t) = σ_min (σ_max/σ_min)^t,    t ∈ [0, 1],

so f = 0, g² = 2 σ(t)² log(σ_max/σ_min), m_t = 1, and, started from x_0 at t = 0, the exact marginal variance is
    σ²_t = σ(t)² − σ²_min = σ²_min ((σ_max/σ_min)^{2t} − 1)      (0 at t = 0).
score_sde's `VESDE.marginal_prob` returns σ(t) instead, the marginal of data already perturbed by N(0, σ²_min);
here σ_t = √(σ(t)² − σ²_min), the marginal of this SDE itself, which is what the forward simulation and the
likelihood see. The two differ by less than σ²_min/(2σ(t)) in σ_t. Prior N(0, σ²_max I) (σ²_1 = σ²_max − σ²_min).
λ(t) = −log σ²_t.

Defaults σ_min = 0.01, σ_max = 50 suit small data: σ_max should exceed the data's largest pairwise distance
(Song & Ermon 2020, technique 1), e.g. ≤ 16 for 8×8 digits in [−1, 1]; 50 is score_sde's CIFAR-10 value for
data in [0, 1]. Larger data in [−1, 1] (CIFAR-10 at up to 2√3072 ≈ 111) wants a larger σ_max.
"""

from __future__ import annotations

import math

import torch

from .base import SDE


class VESDE(SDE):
    """VE-SDE with the geometric σ(t) = σ_min (σ_max/σ_min)^t."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.log_ratio = math.log(self.sigma_max / self.sigma_min)
        self.prior_std = self.sigma_max

    def __repr__(self) -> str:
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"

    def _log_mean_coeff(self, t):
        return torch.zeros_like(t)

    def _var(self, t):
        """σ²_t = σ²_min expm1(2t log(σ_max/σ_min))."""
        return self.sigma_min**2 * torch.expm1(2 * self.log_ratio * t)

    def _drift_coeff(self, t):
        return torch.zeros_like(t)

    def _diffusion_squared(self, t):
        """g² = dσ²/dt = 2 log(σ_max/σ_min) σ²_min (σ_max/σ_min)^{2t}."""
        return 2 * self.log_ratio * self.sigma_min**2 * torch.exp(2 * self.log_ratio * t)

    def _time_of_log_snr(self, log_snr):
        """σ²_t = e^{−λ}  ⇔  t = log1p(e^{−λ}/σ²_min)/(2 log(σ_max/σ_min))."""
        return torch.log1p(torch.exp(-log_snr) / self.sigma_min**2) / (2 * self.log_ratio)
