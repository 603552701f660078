"""The sub-VP SDE (Song et al. 2021, eq. 29): VP's drift with a smaller diffusion,

    dx = −½ β(t) x dt + √(β(t)(1 − e^{−2B(t)})) dW,    B(t) = ∫_0^t β(s) ds,

whose marginal q(x_t | x_0) = N(m_t x_0, σ²_t I) has m_t = e^{−B/2} (as VP) and σ_t = 1 − e^{−B}, a variance
(1 − e^{−B})² below VP's 1 − e^{−B} at every t; prior N(0, I). The schedule is any of VP's (default linear,
β 0.1 → 20, as score_sde). λ(t) = −B − 2 log(1 − e^{−B}).
"""

from __future__ import annotations

import torch

from .vp import ScheduledSDE


class SubVPSDE(ScheduledSDE):
    """Sub-VP SDE on a VP noise schedule (`ScheduledSDE`'s arguments)."""

    def _var(self, t):
        """σ²_t = (1 − e^{−B})² = expm1(−B)²."""
        return torch.expm1(-self.schedule.integral(t)) ** 2

    def _diffusion_squared(self, t):
        """g² = β(1 − e^{−2B}) = dσ²/dt + βσ²."""
        return -self.schedule.beta(t) * torch.expm1(-2 * self.schedule.integral(t))

    def _time_of_log_snr(self, log_snr):
        """With q = e^{−λ}, e^{−B} solves a = (1 − a)²/q, whose root in (0, 1) is a = 1/(1 + (q + √(q² + 4q))/2):
        B = log1p((q + √(q² + 4q))/2), free of overflow as λ → ∞ (t → 0)."""
        q = torch.exp(-log_snr)
        return self.schedule.inv_integral(torch.log1p(0.5 * (q + torch.sqrt(q * q + 4 * q))))
