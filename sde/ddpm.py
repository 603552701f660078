"""DDPM's discrete diffusion (Ho et al. 2020), the VP-SDE discretised to T steps.

Forward chain q(x_t | x_{t−1}) = N(√α_t x_{t−1}, β_t I), α_t = 1 − β_t, ᾱ_t = ∏_{s≤t} α_s, t = 1..T,
with closed form q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I). The schedule arrays are float64; the
methods return the dtype of the tensors passed in. Steps t are integers (a Python int or an
integer tensor of shape (B,)) in 1..T; ᾱ_0 = 1.
"""

from __future__ import annotations

import math

import torch

VARIANCES = ("small", "large")


class DDPMSchedule:
    """A T-step β schedule and the closed forms built on it."""

    def __init__(self, betas: torch.Tensor):
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 2 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must hold at least 2 values, each in (0, 1)")
        self.betas = betas
        self.alphas = 1 - betas
        self.alpha_bars = torch.cumprod(self.alphas, 0)
        self.alpha_bars_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bars[:-1]])
        # β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t) β_t; β̃_1 = 0, so its log is clipped to β̃_2 as in DDPM.
        self.posterior_var = (1 - self.alpha_bars_prev) / (1 - self.alpha_bars) * betas
        self.posterior_log_var = torch.log(torch.cat([self.posterior_var[1:2], self.posterior_var[1:]]))
        self.large_log_var = torch.log(torch.cat([self.posterior_var[1:2], betas[1:]]))
        self._cache: dict = {}

    @classmethod
    def linear(cls, T: int = 1000, beta_1: float = 1e-4, beta_T: float = 0.02) -> DDPMSchedule:
        """β_t = linspace(β_1, β_T, T): DDPM's schedule."""
        return cls(torch.linspace(beta_1, beta_T, T, dtype=torch.float64))

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> DDPMSchedule:
        """Improved DDPM: ᾱ_t = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s)·π/2), β_t = min(1 − ᾱ_t/ᾱ_{t−1}, max_beta)."""
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        alpha_bar = f / f[0]
        return cls((1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta))

    @property
    def T(self) -> int:
        return self.betas.numel()

    def __repr__(self) -> str:
        return f"DDPMSchedule(T={self.T}, beta_1={self.betas[0]:.3g}, beta_T={self.betas[-1]:.3g})"

    # --- indexing ----------------------------------------------------------------------------
    def check_steps(self, t) -> torch.Tensor:
        """t as an int64 tensor, checked to lie in 1..T."""
        t = torch.as_tensor(t)
        if t.is_floating_point() or t.dtype == torch.bool:
            raise ValueError(f"discrete steps must be integers in 1..{self.T}, got dtype {t.dtype}")
        if t.numel() and bool(((t < 1) | (t > self.T)).any()):
            raise ValueError(f"discrete steps must lie in 1..{self.T}; got [{t.min().item()}, {t.max().item()}]")
        return t.long()

    def at(self, name: str, t, x: torch.Tensor) -> torch.Tensor:
        """The schedule array `name` at steps t, cast to x's dtype/device and shaped to broadcast against x."""
        key = (name, x.device, x.dtype)
        if key not in self._cache:
            self._cache[key] = getattr(self, name).to(device=x.device, dtype=x.dtype)
        t = self.check_steps(t).to(x.device)
        values = self._cache[key][t - 1]
        return values.reshape(values.shape + (1,) * (x.dim() - values.dim())) if values.dim() else values

    @property
    def sqrt_alpha_bars(self):
        return self.alpha_bars.sqrt()

    @property
    def sqrt_one_minus_alpha_bars(self):
        return (1 - self.alpha_bars).sqrt()

    # --- closed forms ----------------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε  (a sample of q(x_t | x_0))."""
        return self.at("sqrt_alpha_bars", t, x0) * x0 + self.at("sqrt_one_minus_alpha_bars", t, x0) * noise

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, t):
        """q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I):  μ̃_t = √ᾱ_{t−1}β_t/(1 − ᾱ_t) x_0 + √α_t(1 − ᾱ_{t−1})/(1 − ᾱ_t) x_t.

        Returns (mean, var, log_var), log_var clipped at t = 1 where β̃_1 = 0.
        """
        coef_x0 = self.at("posterior_coef_x0", t, xt)
        coef_xt = self.at("posterior_coef_xt", t, xt)
        return coef_x0 * x0 + coef_xt * xt, self.at("posterior_var", t, xt), self.at("posterior_log_var", t, xt)

    @property
    def posterior_coef_x0(self):
        return self.alpha_bars_prev.sqrt() * self.betas / (1 - self.alpha_bars)

    @property
    def posterior_coef_xt(self):
        return self.alphas.sqrt() * (1 - self.alpha_bars_prev) / (1 - self.alpha_bars)

    def x0_from_eps(self, xt: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
        """x̂_0 = (x_t − √(1 − ᾱ_t) ε)/√ᾱ_t."""
        return (xt - self.at("sqrt_one_minus_alpha_bars", t, xt) * eps) / self.at("sqrt_alpha_bars", t, xt)

    def eps_from_x0(self, xt: torch.Tensor, t, x0: torch.Tensor) -> torch.Tensor:
        """ε = (x_t − √ᾱ_t x_0)/√(1 − ᾱ_t)."""
        return (xt - self.at("sqrt_alpha_bars", t, xt) * x0) / self.at("sqrt_one_minus_alpha_bars", t, xt)

    def p_mean_var(self, eps: torch.Tensor, xt: torch.Tensor, t, variance: str = "small", clip_x0=None):
        """The reverse step p_θ(x_{t−1} | x_t) = N(μ_θ, σ²_t I) from a predicted ε.

        μ_θ = (x_t − β_t/√(1 − ᾱ_t) ε_θ)/√α_t, which equals μ̃_t(x̂_0(ε_θ), x_t). With `clip_x0=(lo, hi)`
        x̂_0 is clamped first and μ̃_t is used. σ²_t = β̃_t ("small") or β_t ("large"; β̃_2 at t = 1).
        Returns (mean, var, log_var).
        """
        if variance not in VARIANCES:
            raise ValueError(f"unknown variance {variance!r}; valid: {list(VARIANCES)}")
        if clip_x0 is None:
            coef = self.at("eps_coef", t, xt)
            mean = (xt - coef * eps) / self.at("sqrt_alphas", t, xt)
        else:
            x0 = self.x0_from_eps(xt, t, eps).clamp(*clip_x0)
            mean = self.q_posterior(x0, xt, t)[0]
        log_var = self.at("posterior_log_var" if variance == "small" else "large_log_var", t, xt)
        return mean, log_var.exp(), log_var

    @property
    def eps_coef(self):
        return self.betas / (1 - self.alpha_bars).sqrt()

    @property
    def sqrt_alphas(self):
        return self.alphas.sqrt()
