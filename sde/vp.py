"""The variance-preserving SDE (Song et al. 2021; LSGM, Vahdat et al. 2021).

    dx = −½ β(t) x dt + √β(t) dW,    t ∈ [0, 1]

with marginal q(x_t | x_0) = N(m_t x_0, σ²_t I), where, for B(t) = ∫_0^t β(s) ds,
    m_t = exp(−½ B(t)),    σ²_t = 1 − (1 − σ²_0) exp(−B(t)).
σ²_0 (default 0) is LSGM's optional variance at t = 0. The schedule (β as data) lives in
`sde.schedules`; this class turns it into the SDE's quantities. Everything is computed in
float64 and returned in the dtype of the input (float32 by default for Python numbers); t is a
number or a tensor of any shape, and x any shape (B, ...) with t of shape (B,) or scalar.
"""

from __future__ import annotations

import math

import torch

from .ddpm import DDPMSchedule
from .schedules import SCHEDULES


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


class VPSDE:
    """VP-SDE with a `linear`, `cosine` or `geometric` noise schedule.

    Arguments by schedule: linear (`beta_min`=0.1, `beta_max`=20), cosine (`cosine_s`=0.008,
    `cosine_logsnr_end`=−10), geometric (`sigma2_min`=1e-4, `sigma2_max`=0.99, LSGM's defaults).
    """

    def __init__(
        self,
        schedule: str = "linear",
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        sigma2_min: float = 1e-4,
        sigma2_max: float = 0.99,
        cosine_s: float = 0.008,
        cosine_logsnr_end: float = -10.0,
        sigma2_0: float = 0.0,
    ):
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; valid: {sorted(SCHEDULES)}")
        if not 0 <= sigma2_0 < 1:
            raise ValueError(f"sigma2_0 must lie in [0, 1), got {sigma2_0}")
        self.schedule_name = schedule
        if schedule == "linear":
            self.schedule = SCHEDULES[schedule](beta_min, beta_max)
        elif schedule == "cosine":
            self.schedule = SCHEDULES[schedule](cosine_s, cosine_logsnr_end)
        else:
            self.schedule = SCHEDULES[schedule](sigma2_min, sigma2_max)
        self.sigma2_0 = float(sigma2_0)

    def __repr__(self) -> str:
        params = {k: v for k, v in vars(self.schedule).items() if not k.startswith("_")}
        return f"VPSDE(schedule={self.schedule_name!r}, {params}, sigma2_0={self.sigma2_0})"

    # --- schedule quantities, float64 inside -------------------------------------------------
    def _apply(self, fn, t) -> torch.Tensor:
        t = as_time(t)
        return fn(t.double()).to(t.dtype)

    def beta(self, t) -> torch.Tensor:
        """β(t)."""
        return self._apply(self.schedule.beta, t)

    def integral(self, t) -> torch.Tensor:
        """B(t) = ∫_0^t β(s) ds."""
        return self._apply(self.schedule.integral, t)

    def alpha_bar(self, t) -> torch.Tensor:
        """ᾱ(t) = m_t² = exp(−B(t)) (the continuous counterpart of DDPM's ᾱ)."""
        return self._apply(lambda s: torch.exp(-self.schedule.integral(s)), t)

    def _var64(self, t64: torch.Tensor) -> torch.Tensor:
        return self.sigma2_0 - (1 - self.sigma2_0) * torch.expm1(-self.schedule.integral(t64))

    def var(self, t) -> torch.Tensor:
        """σ²_t = 1 − (1 − σ²_0) exp(−B(t)), via expm1 so that it stays accurate as t → 0."""
        return self._apply(self._var64, t)

    def marginal(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(m_t, σ_t) of q(x_t | x_0) = N(m_t x_0, σ²_t I)."""
        t = as_time(t)
        t64 = t.double()
        mean_coeff = torch.exp(-0.5 * self.schedule.integral(t64))
        return mean_coeff.to(t.dtype), self._var64(t64).sqrt().to(t.dtype)

    def perturb(self, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """x_t = m_t x_0 + σ_t ε."""
        mean_coeff, std = self.marginal(as_time(t, x0))
        return expand_like(mean_coeff, x0) * x0 + expand_like(std, x0) * noise

    def drift(self, x: torch.Tensor, t) -> torch.Tensor:
        """f(x, t) = −½ β(t) x."""
        return -0.5 * expand_like(self.beta(as_time(t, x)), x) * x

    def diffusion(self, t) -> torch.Tensor:
        """g(t) = √β(t)."""
        return self.beta(t).sqrt()

    def inv_var(self, var) -> torch.Tensor:
        """The time t at which σ²_t = var (the inverse of `var`), for var in [σ²_0, σ²_1]."""
        var = torch.as_tensor(var, dtype=torch.float32) if not torch.is_tensor(var) else var
        lo, hi = self.sigma2_0, float(self._var64(torch.tensor(1.0, dtype=torch.float64)))
        if bool(((var < lo - 1e-12) | (var > hi * (1 + 1e-6))).any()):
            raise ValueError(f"variance must lie in [{lo}, {hi}] (σ² at t = 0 and t = 1)")
        var64 = var.double()
        big_b = -torch.log1p(-(var64 - self.sigma2_0).clamp(min=0) / (1 - self.sigma2_0))
        return self.schedule.inv_integral(big_b).clamp(0, 1).to(var.dtype)

    # --- prior --------------------------------------------------------------------------------
    def prior_sample(self, shape, generator: torch.Generator | None = None, device=None, dtype=None):
        """z_1 ~ N(0, I), the prior the reverse process starts from."""
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, I) summed over all but the batch dimension: −½(D log 2π + ‖z‖²)."""
        flat = z.reshape(z.shape[0], -1)
        return -0.5 * (flat.shape[1] * math.log(2 * math.pi) + flat.pow(2).sum(1))

    # --- discrete special case ------------------------------------------------------------------
    def discretize(self, T: int = 1000) -> DDPMSchedule:
        """DDPM's T-step chain: β_i = β(t_i)/T at t_i = (i − 1)/(T − 1), i = 1..T, for the linear schedule.

        This is score_sde's `discrete_betas = linspace(β_min/T, β_max/T, T)`, i.e. DDPM's
        linspace(1e-4, 0.02, 1000) at T = 1000. Other schedules use β_i = 1 − ᾱ(i/T)/ᾱ((i−1)/T),
        so that ᾱ_i equals the continuous ᾱ(i/T) exactly.
        """
        if not isinstance(T, int) or T < 2:
            raise ValueError(f"T must be an integer >= 2, got {T!r}")
        if self.schedule_name == "linear":
            s = self.schedule
            return DDPMSchedule(torch.linspace(s.beta_min / T, s.beta_max / T, T, dtype=torch.float64))
        grid = torch.arange(T + 1, dtype=torch.float64) / T
        log_alpha_bar = -self.schedule.integral(grid)
        return DDPMSchedule(-torch.expm1(log_alpha_bar[1:] - log_alpha_bar[:-1]))
