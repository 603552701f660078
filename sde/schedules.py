"""Noise schedules of the VP-SDE, as data.

A schedule is the integrated noise rate B(t) = ∫_0^t β(s) ds on t ∈ [0, 1], from which the
VP and sub-VP SDEs' marginals follow: ᾱ(t) = exp(−B(t)). Each schedule gives, in float64,
    beta(t)              β(t) = dB/dt
    integral(t)          B(t)
    inv_integral(B)      t with B(t) = B
    alpha_bar_integral(t) ∫_0^t exp(−B(s)) ds  (closed form; the proposal of `drop_all_iw`)
Inputs are float64 tensors; callers handle dtype and validation.
"""

from __future__ import annotations

import math

import torch


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")


class LinearSchedule:
    """β(t) = β_min + t(β_max − β_min);  B(t) = β_min t + ½(β_max − β_min) t²  (DDPM / score_sde VP)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        _check_positive(beta_min=beta_min, beta_max=beta_max)
        if beta_max < beta_min:
            raise ValueError(f"beta_max ({beta_max}) must be >= beta_min ({beta_min})")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integral(self, t):
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def inv_integral(self, big_b):
        """Root of ½Δ t² + β_min t − B = 0, Δ = β_max − β_min, written stably as 2B/(β_min + √(β_min² + 2ΔB))."""
        delta = self.beta_max - self.beta_min
        return 2 * big_b / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * delta * big_b))

    def alpha_bar_integral(self, t):
        """∫_0^t exp(−β_min s − ½Δ s²) ds = √(π/2Δ)·e^{β_min²/2Δ}·[erf(u(t)) − erf(u(0))], u(s) = (β_min + Δs)/√(2Δ).

        Evaluated through erfc differences with the exponent folded in (scaled complementary error
        function) so that it stays finite for large β_min²/Δ; Δ → 0 falls back to (1 − e^{−β_min t})/β_min.
        """
        delta = self.beta_max - self.beta_min
        if delta < 1e-12:
            return -torch.expm1(-self.beta_min * t) / self.beta_min
        scale = math.sqrt(2 * delta)
        u0 = self.beta_min / scale
        ut = (self.beta_min + delta * t) / scale
        # e^{u0²}[erfc(u0) − erfc(ut)] = erfcx(u0) − e^{u0² − ut²} erfcx(ut), with u0² − ut² = −B(t).
        erfcx = torch.special.erfcx
        return math.sqrt(math.pi) / scale * (erfcx(torch.full_like(t, u0)) - torch.exp(-self.integral(t)) * erfcx(ut))


class CosineSchedule:
    """The cosine schedule of improved DDPM in continuous time.

    ᾱ(t) = cos²(φ(t)) / cos²(φ(0)),  φ(t) = (κt + s)/(1 + s) · π/2,  so B(t) = −2 log(cos φ(t)/cos φ(0)) and
    β(t) = π κ/(1 + s) · tan φ(t). The time scale κ ≤ 1 ends the schedule at log-SNR `logsnr_end` instead of
    at ᾱ = 0, where β would be infinite: ᾱ(1) = sigmoid(logsnr_end) (−10 gives ᾱ(1) ≈ 4.5e-5, close to the
    linear schedule's 4.3e-5).
    """

    def __init__(self, s: float = 0.008, logsnr_end: float = -10.0):
        _check_positive(s=s)
        self.s = float(s)
        self.phi0 = self.s / (1 + self.s) * math.pi / 2
        alpha_bar_end = 1.0 / (1.0 + math.exp(-logsnr_end))
        phi_end = math.acos(math.sqrt(alpha_bar_end) * math.cos(self.phi0))
        self.kappa = (phi_end * 2 / math.pi * (1 + self.s) - self.s)
        self.rate = self.kappa / (1 + self.s) * math.pi / 2  # dφ/dt

    def _phi(self, t):
        return self.phi0 + self.rate * t

    def beta(self, t):
        return 2 * self.rate * torch.tan(self._phi(t))

    def integral(self, t):
        return (-2 * (torch.log(torch.cos(self._phi(t))) - math.log(math.cos(self.phi0)))).clamp(min=0)

    def inv_integral(self, big_b):
        phi = torch.acos(torch.exp(-0.5 * big_b) * math.cos(self.phi0))
        return (phi - self.phi0) / self.rate

    def alpha_bar_integral(self, t):
        """∫_0^t cos²φ(s) ds / cos²φ0 = [t/2 + (sin 2φ(t) − sin 2φ0)/(4 dφ/dt)] / cos²φ0."""
        phi = self._phi(t)
        value = t / 2 + (torch.sin(2 * phi) - math.sin(2 * self.phi0)) / (4 * self.rate)
        return value / math.cos(self.phi0) ** 2


class GeometricSchedule:
    """LSGM's geometric VP-SDE: σ²_t = σ²_min (σ²_max/σ²_min)^t − σ²_min, a variance that grows geometrically.

    With r = σ²_max/σ²_min:  ᾱ(t) = 1 − σ²_t,  B(t) = −log(1 − σ²_min(r^t − 1)),
    β(t) = σ²_min r^t log r / (1 − σ²_min(r^t − 1)). The likelihood weighting β/(2σ²_t) is then nearly
    constant in log σ², which is why LSGM samples t through σ² (see `sde.weighting`).
    """

    def __init__(self, sigma2_min: float = 1e-4, sigma2_max: float = 0.99):
        _check_positive(sigma2_min=sigma2_min, sigma2_max=sigma2_max)
        if not sigma2_min < sigma2_max < 1:
            raise ValueError(f"need 0 < sigma2_min < sigma2_max < 1, got {sigma2_min}, {sigma2_max}")
        self.sigma2_min, self.sigma2_max = float(sigma2_min), float(sigma2_max)
        self.log_ratio = math.log(self.sigma2_max / self.sigma2_min)

    def _sigma2(self, t):
        return self.sigma2_min * torch.expm1(t * self.log_ratio)

    def beta(self, t):
        return self.sigma2_min * torch.exp(t * self.log_ratio) * self.log_ratio / (1 - self._sigma2(t))

    def integral(self, t):
        return -torch.log1p(-self._sigma2(t))

    def inv_integral(self, big_b):
        sigma2 = -torch.expm1(-big_b)
        return torch.log1p(sigma2 / self.sigma2_min) / self.log_ratio

    def alpha_bar_integral(self, t):
        """∫_0^t 1 − σ²_min(r^s − 1) ds = t(1 + σ²_min) − σ²_min (r^t − 1)/log r."""
        return t * (1 + self.sigma2_min) - self._sigma2(t) / self.log_ratio


SCHEDULES = {"linear": LinearSchedule, "cosine": CosineSchedule, "geometric": GeometricSchedule}


def make_schedule(name: str = "linear", beta_min: float = 0.1, beta_max: float = 20.0, sigma2_min: float = 1e-4,
                  sigma2_max: float = 0.99, cosine_s: float = 0.008, cosine_logsnr_end: float = -10.0):
    """The named schedule from the arguments it reads: linear (beta_min, beta_max), cosine (cosine_s,
    cosine_logsnr_end), geometric (sigma2_min, sigma2_max); the others are ignored."""
    if name == "linear":
        return LinearSchedule(beta_min, beta_max)
    if name == "cosine":
        return CosineSchedule(cosine_s, cosine_logsnr_end)
    if name == "geometric":
        return GeometricSchedule(sigma2_min, sigma2_max)
    raise ValueError(f"unknown schedule {name!r}; valid: {sorted(SCHEDULES)}")
