"""Data with a known score: Gaussian mixtures under any linear diffusion (`sde.base.SDE`), in closed form.

If x_0 ~ Σ_k π_k N(μ_k, Σ_k) and x_t = m x_0 + σ ε, then x_t ~ Σ_k π_k N(m μ_k, m²Σ_k + σ²I), so the
exact noise prediction is
    ε*(x_t) = E[ε | x_t] = −σ ∇ log p_t(x_t) = σ Σ_k w_k(x_t) (m²Σ_k + σ²I)⁻¹ (x_t − m μ_k),
with w_k the posterior responsibilities. These serve as exact `eps_fn`s for checking samplers,
likelihoods and bounds, and as toy data with exact log densities. Each Σ_k is diagonalised once
(Σ_k = U_k diag(λ_k) U_kᵀ), which makes every (m, σ) a cheap rescaling. Computation is float64;
x has any shape (B, ...) with D = prod(...) entries.
"""

from __future__ import annotations

import math

import torch

from .base import SDE
from .ddpm import DDPMSchedule

MIXTURE_CHUNK = 2**16  # elements of a (rows, K, D) intermediate of `diagonal_mixture_eps` (256 KiB in float32)


class GaussianMixture:
    """Σ_k π_k N(μ_k, Σ_k) in D dimensions. `covs` is (K, D, D), or (K, D) for diagonal covariances."""

    def __init__(self, means, covs, weights=None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        if self.means.dim() != 2:
            raise ValueError("means must have shape (K, D)")
        k, d = self.means.shape
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if covs.shape == (k, d):
            covs = torch.diag_embed(covs)
        if covs.shape != (k, d, d):
            raise ValueError(f"covs must have shape ({k}, {d}, {d}) or ({k}, {d}), got {tuple(covs.shape)}")
        self.covs = covs
        self.eigenvalues, self.eigenvectors = torch.linalg.eigh(covs)
        if not bool((self.eigenvalues > 0).all()):
            raise ValueError("covariances must be positive definite")
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else weights
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        if self.weights.shape != (k,) or not torch.isclose(self.weights.sum(), torch.tensor(1.0, dtype=torch.float64)):
            raise ValueError("weights must be K probabilities summing to 1")

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _components(self, x, mean_coeff, std):
        """Per component: log π_k N(x; mμ_k, m²Σ_k + σ²I) (B, K) and (m²Σ_k + σ²I)⁻¹(x − mμ_k) (B, K, D)."""
        flat = x.reshape(x.shape[0], -1).double()
        m = torch.as_tensor(mean_coeff, dtype=torch.float64).reshape(-1, 1, 1)
        s2 = torch.as_tensor(std, dtype=torch.float64).reshape(-1, 1, 1) ** 2
        centered = flat[:, None, :] - m * self.means[None]  # (B, K, D)
        rotated = torch.einsum("kde,bkd->bke", self.eigenvectors, centered)  # U_kᵀ(x − mμ_k)
        spectrum = m**2 * self.eigenvalues[None] + s2  # (B, K, D)
        log_det = torch.log(spectrum).sum(-1)
        quad = (rotated**2 / spectrum).sum(-1)
        log_joint = torch.log(self.weights)[None] - 0.5 * (self.dim * math.log(2 * math.pi) + log_det + quad)
        solved = torch.einsum("kde,bke->bkd", self.eigenvectors, rotated / spectrum)
        return log_joint, solved

    def marginal_log_prob(self, x: torch.Tensor, mean_coeff=1.0, std=0.0) -> torch.Tensor:
        """log p_t(x) for x_t = m x_0 + σ ε (B,); m, σ scalars or (B,)."""
        log_joint, _ = self._components(x, mean_coeff, std)
        return torch.logsumexp(log_joint, 1).to(x.dtype)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x_0) (B,)."""
        return self.marginal_log_prob(x)

    def eps(self, x: torch.Tensor, mean_coeff, std) -> torch.Tensor:
        """ε*(x) = σ Σ_k w_k(x)(m²Σ_k + σ²I)⁻¹(x − mμ_k), the exact E[ε | x_t = x]."""
        log_joint, solved = self._components(x, mean_coeff, std)
        responsibilities = torch.softmax(log_joint, 1)
        s = torch.as_tensor(std, dtype=torch.float64).reshape(-1, 1)
        return (s * (responsibilities[..., None] * solved).sum(1)).reshape(x.shape).to(x.dtype)

    def eps_fn(self, sde: SDE):
        """The exact eps_fn(x, t) of a continuous SDE (through its marginal m_t, σ_t)."""

        def eps_fn(x, t):
            mean_coeff, std = sde.marginal(t.double() if torch.is_tensor(t) else t)
            return self.eps(x, mean_coeff, std)

        return eps_fn

    def eps_fn_discrete(self, schedule: DDPMSchedule):
        """The exact eps_fn(x, i) of a DDPM chain at integer steps i (m = √ᾱ_i, σ = √(1 − ᾱ_i))."""

        def eps_fn(x, i):
            steps = schedule.check_steps(i)
            alpha_bar = schedule.alpha_bars[steps - 1]
            return self.eps(x, alpha_bar.sqrt(), (1 - alpha_bar).sqrt())

        return eps_fn

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float64) -> torch.Tensor:
        """n draws (n, D): a component by its weight, then μ_k + U_k √λ_k z."""
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        scaled = self.eigenvalues[component].sqrt() * z
        draws = self.means[component] + torch.einsum("nde,ne->nd", self.eigenvectors[component], scaled)
        return draws.to(dtype)


def diagonal_mixture_eps(x: torch.Tensor, mean_coeff: torch.Tensor, std: torch.Tensor, means: torch.Tensor,
                         variances: torch.Tensor) -> torch.Tensor:
    """ε*(x) = E[ε | x_t = x] when x_0 is drawn from the equal-weight mixture (1/K) Σ_k N(μ_k, diag v_k):
        ε*(x) = σ Σ_k w_k (x − m μ_k) / (m² v_k + σ²),   w_k ∝ N(x; m μ_k, diag(m² v_k + σ²)),
    with (m, σ) per row of x. The float32, diagonal, batched-over-t special case of `GaussianMixture.eps`, cheap
    enough for a training target: x (B, D), mean_coeff and std (B,), means and variances (K, D); returns (B, D).
    The (rows, K, D) intermediates are formed MIXTURE_CHUNK elements at a time, so that they stay in cache: 2-3× faster
    than whole-batch tensors at B = 256, K = 64, D = 160 on one CPU core (`benchmarks/mixture_target.py`).

    As a denoising target (`lsgm.objective`, the posterior-mixture target) it is the Stable Target Field of Xu et
    al. (2023) with every reference a Gaussian instead of a point: E‖ε̂(x_t) − ε*(x_t)‖² has the minimiser of
    E‖ε̂(x_t) − ε‖² when x_0 comes from the mixture, without the noise of ε given x_t."""
    rows = max(1, MIXTURE_CHUNK // max(means.numel(), 1))
    out = torch.empty_like(x)
    for start in range(0, x.shape[0], rows):
        part = slice(start, start + rows)
        m, sigma = mean_coeff[part].reshape(-1, 1, 1), std[part].reshape(-1, 1, 1)
        variance = torch.addcmul(sigma**2, m**2, variances[None])  # m² v_k + σ², (rows, K, D)
        centred = torch.addcmul(x[part, None, :], m, means[None], value=-1.0)  # x − m μ_k
        scaled = centred / variance
        # log N(x; m μ_k, diag(m² v_k + σ²)) up to a constant shared by every k
        log_joint = -0.5 * (variance.log().sum(-1) + torch.linalg.vecdot(scaled, centred))
        responsibilities = torch.softmax(log_joint, 1)
        out[part] = sigma.reshape(-1, 1) * torch.bmm(responsibilities[:, None, :], scaled).squeeze(1)
    return out


def gaussian(mean, cov) -> GaussianMixture:
    """A single Gaussian N(mean, cov) (cov (D, D) or diagonal (D,))."""
    mean = torch.as_tensor(mean, dtype=torch.float64)
    cov = torch.as_tensor(cov, dtype=torch.float64)
    return GaussianMixture(mean[None], cov[None])
