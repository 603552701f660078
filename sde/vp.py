"""The variance-preserving SDE (Song et al. 2021; LSGM, Vahdat et al. 2021) and the schedule-driven base it
shares with sub-VP.

    dx = −½ β(t) x dt + √β(t) dW,    t ∈ [0, 1]

with marginal q(x_t | x_0) = N(m_t x_0, σ²_t I), where, for B(t) = ∫_0^t β(s) ds,
    m_t = exp(−½ B(t)),    σ²_t = 1 − (1 − σ²_0) exp(−B(t)),    λ(t) = −B(t) − log σ²_t,
and prior N(0, I). σ²_0 (default 0) is LSGM's optional variance at t = 0. The schedule (β as data) lives in
`sde.schedules`; these classes turn it into the SDE's quantities (`sde.base` for the interface).
"""

from __future__ import annotations

import torch

from .base import SDE
from .ddpm import DDPMSchedule
from .schedules import make_schedule


class ScheduledSDE(SDE):
    """An SDE with drift −½β(t) x for a VP noise schedule: m_t = exp(−½B(t)); the variance is the subclass's.

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
    ):
        self.schedule_name = schedule
        self.schedule = make_schedule(schedule, beta_min=beta_min, beta_max=beta_max, sigma2_min=sigma2_min,
                                      sigma2_max=sigma2_max, cosine_s=cosine_s, cosine_logsnr_end=cosine_logsnr_end)

    def _parameters(self) -> dict:
        return {k: v for k, v in vars(self.schedule).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(schedule={self.schedule_name!r}, {self._parameters()})"

    def _log_mean_coeff(self, t):
        return -0.5 * self.schedule.integral(t)

    def _drift_coeff(self, t):
        return -0.5 * self.schedule.beta(t)

    def beta(self, t) -> torch.Tensor:
        """β(t)."""
        return self._apply(self.schedule.beta, t)

    def integral(self, t) -> torch.Tensor:
        """B(t) = ∫_0^t β(s) ds."""
        return self._apply(self.schedule.integral, t)

    def alpha_bar(self, t) -> torch.Tensor:
        """ᾱ(t) = m_t² = exp(−B(t)) (the continuous counterpart of DDPM's ᾱ)."""
        return self._apply(lambda s: torch.exp(-self.schedule.integral(s)), t)

    def alpha_bar_integral(self, t) -> torch.Tensor:
        """∫_0^t ᾱ(s) ds in closed form (the schedule's)."""
        return self._apply(self.schedule.alpha_bar_integral, t)


class VPSDE(ScheduledSDE):
    """VP-SDE with a `linear`, `cosine` or `geometric` noise schedule (`ScheduledSDE`'s arguments) and σ²_0.

    Only the VP-SDE has a DDPM chain (`discretize`) and the closed forms of the importance-sampled time
    schemes (`sde.weighting`).
    """

    def __init__(self, *schedule_args, sigma2_0: float = 0.0, **schedule_kwargs):
        super().__init__(*schedule_args, **schedule_kwargs)
        if not 0 <= sigma2_0 < 1:
            raise ValueError(f"sigma2_0 must lie in [0, 1), got {sigma2_0}")
        self.sigma2_0 = float(sigma2_0)

    def __repr__(self) -> str:
        return f"VPSDE(schedule={self.schedule_name!r}, {self._parameters()}, sigma2_0={self.sigma2_0})"

    def _var(self, t):
        """σ²_t = σ²_0 − (1 − σ²_0) expm1(−B(t)): accurate as t → 0."""
        return self.sigma2_0 - (1 - self.sigma2_0) * torch.expm1(-self.schedule.integral(t))

    def _diffusion_squared(self, t):
        return self.schedule.beta(t)

    def _time_of_log_snr(self, log_snr):
        """e^λ = e^{−B}/(1 − (1 − σ²_0)e^{−B})  ⇔  B = log1p(e^{−λ} − σ²_0)."""
        return self.schedule.inv_integral(torch.log1p(torch.exp(-log_snr) - self.sigma2_0))

    def inv_var(self, var) -> torch.Tensor:
        """The time t at which σ²_t = var (the inverse of `var`), for var in [σ²_0, σ²_1]."""
        var = torch.as_tensor(var, dtype=torch.float32) if not torch.is_tensor(var) else var
        lo, hi = self.sigma2_0, float(self._var(torch.tensor(1.0, dtype=torch.float64)))
        if bool(((var < lo - 1e-12) | (var > hi * (1 + 1e-6))).any()):
            raise ValueError(f"variance must lie in [{lo}, {hi}] (σ² at t = 0 and t = 1)")
        big_b = -torch.log1p(-(var.double() - self.sigma2_0).clamp(min=0) / (1 - self.sigma2_0))
        return self.schedule.inv_integral(big_b).clamp(0, 1).to(var.dtype)

    def discretize(self, T: int = 1000) -> DDPMSchedule:
        """DDPM's T-step chain (VP only): β_i = β(t_i)/T at t_i = (i − 1)/(T − 1), i = 1..T, for the linear schedule.

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
