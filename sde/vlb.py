"""DDPM's variational bound term by term, and progressive coding's rate–distortion curve.

For data x_0 and the T-step chain of a `DDPMSchedule`, the negative ELBO (Ho et al. 2020, eq. 5) is

    −log p_θ(x_0) ≤ L = L_T + Σ_{t=2}^{T} L_{t−1} + L_0,
    L_T     = KL(q(x_T | x_0) ‖ N(0, I))                                      (prior, closed form)
    L_{t−1} = E_{q(x_t | x_0)} KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t))    (t = 2..T)
    L_0     = E_{q(x_1 | x_0)} −log p_θ(x_0 | x_1)                              (decoder)

Index convention: the *step-t term* is the term evaluated at x_t ~ q(x_t | x_0), one sample each.
For t ≥ 2 it is the KL that codes x_{t−1} given x_t (DDPM's L_{t−1}); for t = 1 it is the decoder
−log p_θ(x_0 | x_1) (DDPM's L_0). p_θ(x_{t−1} | x_t) = N(μ_θ, σ²_t I) comes from
`DDPMSchedule.p_mean_var`. The decoder is a Gaussian discretised to the data's `levels` (bins of
width 2/(levels − 1) centred on the level values in [−1, 1]), a Gaussian density for continuous data
(levels=None), or a caller's own (for LSGM's latent prior, for instance).

Progressive coding (DDPM §4.3, Algorithms 3–4): a receiver gets x_T for L_T bits, then x_{T−1}, …,
x_1, paying the step-t term for x_{t−1}. Once x_t is known it has received

    rate(t) = L_T + Σ_{s=t+1}^{T} (step-s term)      (DDPM: L_T + Σ_{s ≥ t} L_s),

so rate(T) = L_T and rate(1) = L − L_0, and it can show x̂_0 = (x_t − √(1 − ᾱ_t) ε_θ(x_t, t))/√ᾱ_t,
whose distortion is RMSE(x_0, x̂_0) on the level scale 0..levels − 1 (0..255 for 8-bit images, the
scale of DDPM Table 4; the data's own scale when levels=None). Both come from the one pass that
computes the bound. Nats are per sample (summed over dimensions); bits/dim = nats/(D ln 2).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from .ddpm import DDPMSchedule

Decoder = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# --- densities ------------------------------------------------------------------------------------
def normal_kl(mean1, log_var1, mean2, log_var2) -> torch.Tensor:
    """KL(N(μ₁, e^{ℓ₁}) ‖ N(μ₂, e^{ℓ₂})) = ½(ℓ₂ − ℓ₁ + e^{ℓ₁ − ℓ₂} + (μ₁ − μ₂)² e^{−ℓ₂} − 1), elementwise
    (arguments broadcast; at least one must be a tensor)."""
    mean1, log_var1, mean2, log_var2 = _as_tensors(mean1, log_var1, mean2, log_var2)
    squared_distance = (mean1 - mean2) ** 2 * torch.exp(-log_var2)
    return 0.5 * (log_var2 - log_var1 + torch.exp(log_var1 - log_var2) + squared_distance - 1)


def gaussian_log_likelihood(x: torch.Tensor, mean, log_var) -> torch.Tensor:
    """log N(x; μ, e^ℓ) = −½(log 2π + ℓ + (x − μ)² e^{−ℓ}), elementwise: the decoder for continuous data."""
    x, mean, log_var = _as_tensors(x, mean, log_var)
    return -0.5 * (math.log(2 * math.pi) + log_var + (x - mean) ** 2 * torch.exp(-log_var))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean, log_var, levels: int) -> torch.Tensor:
    """log P(x) for x on the grid x_k = 2k/(levels − 1) − 1 under N(μ, e^ℓ) discretised to its bins.

    P(x_k) = Φ(b₊) − Φ(b₋), b± = (x_k ± 1/(levels − 1) − μ)/σ, with b₋ = −∞ for k = 0 and b₊ = +∞ for
    k = levels − 1, so the probabilities of all levels sum to 1. Computed as log Φ(b₊) + log(1 − e^{log Φ(b₋)
    − log Φ(b₊)}) with the exact log Φ (`torch.special.log_ndtr`), after reflecting bins that lie above the
    mean (Φ(b₊) − Φ(b₋) = Φ(−b₋) − Φ(−b₊)) so that both arguments sit in the accurate lower tail. Elementwise;
    x is snapped to the nearest level.
    """
    if levels is None or int(levels) < 2:
        raise ValueError(f"levels must be an integer ≥ 2, got {levels!r}")
    x, mean, log_var = _as_tensors(x, mean, log_var)
    half_width = 1.0 / (levels - 1)
    k = torch.round((x + 1) / (2 * half_width)).clamp(0, levels - 1)
    centre = k * 2 * half_width - 1
    inv_std = torch.exp(-0.5 * log_var)
    lower = torch.where(k == 0, -math.inf, (centre - half_width - mean) * inv_std)
    upper = torch.where(k == levels - 1, math.inf, (centre + half_width - mean) * inv_std)
    reflect = lower > 0
    lower, upper = torch.where(reflect, -upper, lower), torch.where(reflect, -lower, upper)
    log_cdf_upper = torch.special.log_ndtr(upper)
    return log_cdf_upper + _log1mexp(torch.special.log_ndtr(lower) - log_cdf_upper)


def _log1mexp(a: torch.Tensor) -> torch.Tensor:
    """log(1 − eᵃ) for a ≤ 0, accurate near 0 (log(−expm1 a)) and far below it (log1p(−eᵃ))."""
    return torch.where(a > -math.log(2), torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def _as_tensors(*values):
    reference = next((v for v in values if torch.is_tensor(v)), None)
    if reference is None:
        raise TypeError("at least one argument must be a tensor")
    return [v if torch.is_tensor(v) else torch.as_tensor(v, dtype=reference.dtype, device=reference.device)
            for v in values]


def to_bits_per_dim(nats, num_dims: int):
    """bits/dim = nats/(D ln 2)."""
    return nats / (num_dims * math.log(2))


def level_scale(levels: int | None) -> float:
    """The factor from [−1, 1] to the level scale 0..levels − 1: (levels − 1)/2 (1 for continuous data)."""
    return 1.0 if levels is None else (levels - 1) / 2


# --- which steps ----------------------------------------------------------------------------------
SPACINGS = ("log", "uniform")


def bound_steps(T: int, num_steps: int | None = None, generator: torch.Generator | None = None,
                spacing: str = "log"):
    """Steps at which to evaluate the step-t terms, and how many steps of 1..T each one stands for.

    num_steps=None (or T): every step 1..T, each of weight 1. num_steps = K < T: step 1 (the decoder,
    weight 1) and one step drawn uniformly from each of K − 1 contiguous strata of 2..T, weighted by the
    stratum's size n_j, so that Σ_k w_k (step-t_k term) is a stratified, unbiased estimate of
    Σ_{t=2}^{T} (step-t term). Strata edges are geometric in t ("log", the default: single steps where the
    terms fall steeply, near t = 2, wide strata where they are flat) or of near-equal size ("uniform").
    Returns (steps (K,) int64 ascending, weights (K,) float64).
    """
    if num_steps is None or num_steps == T:
        return torch.arange(1, T + 1), torch.ones(T, dtype=torch.float64)
    if not 2 <= num_steps <= T:
        raise ValueError(f"num_steps must lie in 2..{T} (or be None for all steps), got {num_steps}")
    edges = stratum_edges(T, num_steps - 1, spacing)
    sizes = edges[1:] - edges[:-1]
    device = generator.device if generator is not None else "cpu"
    offsets = (torch.rand(num_steps - 1, generator=generator, device=device, dtype=torch.float64).cpu() * sizes)
    drawn = edges[:-1] + offsets.long().clamp(max=sizes - 1)
    return torch.cat([torch.ones(1, dtype=torch.long), drawn]), torch.cat([torch.ones(1), sizes]).double()


def stratum_edges(T: int, count: int, spacing: str) -> torch.Tensor:
    """count + 1 increasing integer edges from 2 to T + 1 (stratum j = [e_j, e_{j+1})): round(2((T + 1)/2)^{j/count})
    ("log") or round(2 + (T − 1) j/count) ("uniform"), each at least one step above the previous edge."""
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; valid: {list(SPACINGS)}")
    fractions = torch.linspace(0, 1, count + 1, dtype=torch.float64)
    targets = 2 * ((T + 1) / 2) ** fractions if spacing == "log" else 2 + (T - 1) * fractions
    edges = [2]
    for j, target in enumerate(targets[1:].round().long().tolist(), start=1):
        edges.append(min(max(target, edges[-1] + 1), T + 1 - (count - j)))
    return torch.tensor(edges)


# --- the bound --------------------------------------------------------------------------------------
@dataclasses.dataclass
class VariationalBound:
    """The bound of a batch, term by term (nats per sample).

    steps (K,): evaluated steps, ascending, steps[0] = 1; weights (K,): steps each one stands for;
    terms (B, K): the step-t terms (column 0: the decoder −log p_θ(x_0 | x_1), others the KLs);
    prior (B,): L_T; squared_error (B, K): mean over dimensions of (x̂_0 − x_0)² on the level scale;
    num_dims: D; T: the chain's length.
    """

    steps: torch.Tensor
    weights: torch.Tensor
    terms: torch.Tensor
    prior: torch.Tensor
    squared_error: torch.Tensor
    num_dims: int
    T: int

    @property
    def decoder(self) -> torch.Tensor:
        """L_0 per sample (nats)."""
        return self.terms[:, 0]

    @property
    def diffusion(self) -> torch.Tensor:
        """Σ_{t=2}^{T} (step-t term) per sample (nats; stratified estimate when steps were subsampled)."""
        return (self.terms[:, 1:] * self.weights[1:]).sum(1)

    @property
    def total(self) -> torch.Tensor:
        """L = L_T + Σ_{t≥2} L_{t−1} + L_0 per sample (nats)."""
        return self.prior + self.diffusion + self.decoder

    @property
    def bits_per_dim(self) -> torch.Tensor:
        """L per sample in bits/dim."""
        return to_bits_per_dim(self.total, self.num_dims)

    def summary(self) -> dict[str, float]:
        """Batch means in bits/dim (total, prior, diffusion, decoder), the total's standard error and nats."""
        count = self.total.numel()
        parts = {"total": self.total, "prior": self.prior, "diffusion": self.diffusion, "decoder": self.decoder}
        summary = {f"{name}_bits_per_dim": to_bits_per_dim(value.mean().item(), self.num_dims)
                   for name, value in parts.items()}
        summary["total_bits_per_dim_stderr"] = to_bits_per_dim(
            self.total.std().item() / math.sqrt(count), self.num_dims) if count > 1 else math.nan
        summary["total_nats"] = self.total.mean().item()
        return summary

    def rate_distortion(self) -> RateDistortion:
        """Progressive coding's table over the evaluated steps (batch means; see the module docstring).

        rate(t_k) = L_T + Σ_{j > k} w_j (step-t_j term) in bits/dim, distortion(t_k) = √(mean (x̂_0 − x_0)²)
        on the level scale, term(t_k) = the step-t_k term in bits/dim. With every step evaluated this is
        exact; with strata, a stratum counts as received once all its steps lie above t.
        """
        terms = to_bits_per_dim(self.terms.mean(0).cpu(), self.num_dims)
        weighted = terms * self.weights.cpu()
        received_above = weighted.flip(0).cumsum(0).flip(0) - weighted
        prior = to_bits_per_dim(self.prior.mean().item(), self.num_dims)
        distortion = self.squared_error.mean(0).sqrt().cpu()
        return RateDistortion(self.steps.cpu(), prior + received_above, distortion, terms, self.T)


@dataclasses.dataclass
class RateDistortion:
    """Per evaluated step t (ascending): rate (bits/dim received once x_t is known), distortion (RMSE of
    x̂_0 on the level scale), term (the step-t term, bits/dim); T: the chain's length. CPU tensors."""

    steps: torch.Tensor
    rate: torch.Tensor
    distortion: torch.Tensor
    term: torch.Tensor
    T: int

    def rows(self) -> list[dict[str, float]]:
        """One dict per step (step, reverse_steps = T − t + 1, rate, distortion, term), for printing or JSON."""
        return [{"step": int(t), "reverse_steps": self.T - int(t) + 1, "rate_bits_per_dim": float(r),
                 "distortion_rmse": float(d), "term_bits_per_dim": float(e)}
                for t, r, d, e in zip(self.steps, self.rate, self.distortion, self.term)]


def prior_kl(schedule: DDPMSchedule, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(N(√ᾱ_T x_0, (1 − ᾱ_T) I) ‖ N(0, I)) per sample (nats), in closed form."""
    x0 = x0.double()
    mean = schedule.at("sqrt_alpha_bars", schedule.T, x0) * x0
    log_var = torch.log1p(-schedule.alpha_bars[-1]).to(x0)
    return _sum_dims(normal_kl(mean, log_var, 0.0, 0.0))


def decoder_nll(levels: int | None) -> Decoder:
    """−log p_θ(x_0 | x_1) per sample (nats) for x_0 (B, ...) and the step-1 mean and log-variance: the
    Gaussian discretised to `levels`, or the Gaussian density when levels is None."""
    if levels is None:
        return lambda x0, mean, log_var: -_sum_dims(gaussian_log_likelihood(x0, mean, log_var))
    return lambda x0, mean, log_var: -_sum_dims(discretized_gaussian_log_likelihood(x0, mean, log_var, levels))


def _sum_dims(values: torch.Tensor) -> torch.Tensor:
    return values.reshape(values.shape[0], -1).sum(1)


@torch.no_grad()
def variational_bound(
    eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    schedule: DDPMSchedule,
    x0: torch.Tensor,
    levels: int | None = None,
    *,
    num_steps: int | None = None,
    spacing: str = "log",
    variance: str = "small",
    clip_x0: tuple[float, float] | None = None,
    decoder: Decoder | None = None,
    distortion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 1024,
    generator: torch.Generator | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> VariationalBound:
    """DDPM's bound for each x_0 in a batch (B, ...), term by term, with the distortion of x̂_0 at each step.

    eps_fn(x_t, t) gets x_t in x0's dtype and integer steps t (b,); the (sample, step) pairs are sent in
    chunks of `batch_size`. Each step-t term uses one x_t ~ q(x_t | x_0). `num_steps` and `spacing` subsample
    the steps (see `bound_steps`); `variance` ("small" β̃_t or "large" β_t) and `clip_x0` (clamp x̂_0, then μ̃) choose
    p_θ as in `DDPMSchedule.p_mean_var`, and `clip_x0` also clamps the x̂_0 whose distortion is measured.
    `decoder(x_0, mean, log_var) -> nats (b,)` replaces the default `decoder_nll(levels)`;
    `distortion(x̂_0, index) -> (b,)` replaces the squared error (x̂_0 − x_0)² averaged over dimensions on
    the level scale — e.g. measured after decoding latents, `index` naming each row's sample in x0.
    `generator` draws the steps and the noise; `on_chunk(n)` is called after each chunk of n pairs (a progress bar's
    update; there are B · len(steps) pairs). The maths runs in float64.
    """
    steps, weights = bound_steps(schedule.T, num_steps, generator, spacing)
    decoder = decoder_nll(levels) if decoder is None else decoder
    count, num_evaluated = x0.shape[0], steps.numel()
    terms = torch.empty(count * num_evaluated, dtype=torch.float64, device=x0.device)
    squared_error = torch.empty_like(terms)
    for pairs in torch.arange(count * num_evaluated, device=x0.device).split(batch_size):
        t = steps.to(x0.device)[pairs // count]
        index = pairs % count
        terms[pairs], x0_hat = _step_terms(eps_fn, schedule, x0[index], t, variance, clip_x0, decoder, generator)
        if distortion is None:
            squared_error[pairs] = (x0_hat - x0[index].double()).pow(2).flatten(1).mean(1) * level_scale(levels) ** 2
        else:
            squared_error[pairs] = distortion(x0_hat, index)
        if on_chunk is not None:
            on_chunk(len(pairs))
    return VariationalBound(steps, weights.to(x0.device), terms.reshape(num_evaluated, count).T,
                            prior_kl(schedule, x0), squared_error.reshape(num_evaluated, count).T,
                            x0[0].numel(), schedule.T)


def _step_terms(eps_fn, schedule, x0, t, variance, clip_x0, decoder, generator):
    """The step-t terms of a chunk (KL for t ≥ 2, decoder for t = 1) (b,) and the prediction x̂_0 (float64)."""
    x0_double = x0.double()
    noise = _standard_normal(x0_double, generator)
    xt = schedule.q_sample(x0_double, t, noise)
    eps = eps_fn(xt.to(x0.dtype), t).double()
    mean, _, log_var = schedule.p_mean_var(eps, xt, t, variance, clip_x0)
    posterior_mean, _, posterior_log_var = schedule.q_posterior(x0_double, xt, t)
    terms = _sum_dims(normal_kl(posterior_mean, posterior_log_var, mean, log_var))
    first = t == 1
    if bool(first.any()):
        terms[first] = decoder(x0_double[first], mean[first], log_var[first])
    x0_hat = schedule.x0_from_eps(xt, t, eps)
    return terms, x0_hat if clip_x0 is None else x0_hat.clamp(*clip_x0)


def _standard_normal(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)
