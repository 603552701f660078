"""Distributions of the VAE: the latent diagonal Normal and the discrete image likelihoods.

Images live in [-1, 1] and are quantised to ``levels`` bins: pixel value k in {0..levels-1} sits at
the bin centre c_k = 2k/(levels-1) - 1, and bin k covers [c_k - h, c_k + h] with half-width
h = 1/(levels-1); the two edge bins extend to -inf and +inf, so every discrete likelihood below puts
probability exactly 1 on the set of bins.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2.0 * math.pi)
MIN_LOG_SCALE, MAX_LOG_SCALE = -7.0, 7.0  # output log-scales are clamped: every bin keeps a finite log-prob


def bin_centers(levels: int, device=None, dtype=None) -> torch.Tensor:
    """c_k = 2k/(levels-1) - 1 for k = 0..levels-1."""
    return torch.linspace(-1.0, 1.0, levels, device=device, dtype=dtype)


def bin_index(x: torch.Tensor, levels: int) -> torch.Tensor:
    """k = round((x + 1)/2 * (levels-1)), clamped to {0..levels-1} (the inverse of ``bin_centers``)."""
    return torch.round((x + 1.0) * 0.5 * (levels - 1)).clamp_(0, levels - 1).long()


def log_diff_sigmoid(a: torch.Tensor, b: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
    """log(sigmoid(a) - sigmoid(b)) for a = b + gap, gap > 0, without cancellation:
    sigmoid(a) - sigmoid(b) = sigmoid(a) * sigmoid(-b) * (1 - exp(-gap))."""
    return F.logsigmoid(a) + F.logsigmoid(-b) + torch.log(-torch.expm1(-gap))


def log_diff_ndtr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(Phi(a) - Phi(b)) for a > b, without cancellation: in the upper tail the symmetric form
    Phi(-b) - Phi(-a) is used, then log Phi(a') + log(1 - exp(log Phi(b') - log Phi(a')))."""
    upper = b > 0
    a, b = torch.where(upper, -b, a), torch.where(upper, -a, b)
    log_a, log_b = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    return log_a + torch.log(-torch.expm1(torch.clamp(log_b - log_a, max=-1e-30)))


class Normal:
    """Diagonal Normal N(mu, diag(exp(log_std))^2) over latent tensors of any shape."""

    def __init__(self, mu: torch.Tensor, log_std: torch.Tensor):
        self.mu, self.log_std = mu, log_std

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(self.log_std)

    def sample(self, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised z = mu + temperature * std * eps, eps ~ N(0, I) (from `generator`, or torch's global one)."""
        eps = torch.randn(self.mu.shape, generator=generator, device=self.mu.device, dtype=self.mu.dtype)
        return self.mu + temperature * self.std * eps

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Elementwise log N(z; mu, std^2) = -((z - mu)/std)^2 / 2 - log std - log(2 pi)/2."""
        return -0.5 * ((z - self.mu) / self.std) ** 2 - self.log_std - 0.5 * LOG_2PI

    def kl(self, other: Normal) -> torch.Tensor:
        """Elementwise KL(self || other) = log(s_o/s) + (s^2 + (mu - mu_o)^2) / (2 s_o^2) - 1/2."""
        ratio = torch.exp(2.0 * (self.log_std - other.log_std))
        mean_term = ((self.mu - other.mu) / other.std) ** 2
        return 0.5 * (ratio + mean_term - 1.0) - (self.log_std - other.log_std)

    @staticmethod
    def standard(shape, device=None, dtype=None) -> Normal:
        """N(0, I) of the given shape."""
        zeros = torch.zeros(shape, device=device, dtype=dtype)
        return Normal(zeros, zeros)


class DiscreteImageDistribution:
    """A factorised distribution over images whose pixels take ``levels`` values in [-1, 1].

    Subclasses give ``log_prob_elementwise``; sampling, mean and the bin table follow from it.
    """

    levels: int

    def log_prob_elementwise(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x_i) per pixel, shape of x (B, C, H, W)."""
        raise NotImplementedError

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) = sum_i log p(x_i), shape (B,)."""
        return self.log_prob_elementwise(x).flatten(1).sum(1)

    @property
    def shape(self) -> torch.Size:
        raise NotImplementedError

    def bin_log_probs(self) -> torch.Tensor:
        """log p(x_i = c_k) for every bin k: shape (B, C, H, W, levels); logsumexp over k is 0."""
        ref = self._reference()
        centers = bin_centers(self.levels, ref.device, ref.dtype)
        return torch.stack([self.log_prob_elementwise(c.expand(self.shape)) for c in centers], dim=-1)

    def _reference(self) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """x_i = c_k with k ~ Categorical(p(x_i = c_.)), shape (B, C, H, W) (drawn from `generator`, or torch's
        global one)."""
        log_p = self.bin_log_probs()
        probabilities = log_p.softmax(-1).reshape(-1, self.levels)
        if not torch.isfinite(probabilities).all():
            raise FloatingPointError("non-finite value in the decoder's output; check the model's weights and the "
                                     "latents it decodes")
        k = torch.multinomial(probabilities, 1, True, generator=generator).view(log_p.shape[:-1])
        return bin_centers(self.levels, log_p.device, log_p.dtype)[k]

    def mean(self) -> torch.Tensor:
        """E[x_i] = sum_k p(x_i = c_k) c_k, in [-1, 1]."""
        log_p = self.bin_log_probs()
        return (log_p.exp() * bin_centers(self.levels, log_p.device, log_p.dtype)).sum(-1)

    def mode(self) -> torch.Tensor:
        """argmax_k p(x_i = c_k) as a bin centre."""
        log_p = self.bin_log_probs()
        return bin_centers(self.levels, log_p.device, log_p.dtype)[log_p.argmax(-1)]


class Categorical(DiscreteImageDistribution):
    """Per-pixel categorical over the bins: p(x_i = c_k) = softmax(logits_i)_k.
    ``logits`` has shape (B, C, H, W, levels)."""

    def __init__(self, logits: torch.Tensor):
        self.levels = logits.shape[-1]
        self.log_p = torch.log_softmax(logits, dim=-1)

    @property
    def shape(self) -> torch.Size:
        return self.log_p.shape[:-1]

    def _reference(self) -> torch.Tensor:
        return self.log_p

    def bin_log_probs(self) -> torch.Tensor:
        return self.log_p

    def log_prob_elementwise(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_p.gather(-1, bin_index(x, self.levels).unsqueeze(-1)).squeeze(-1)


class Bernoulli(DiscreteImageDistribution):
    """Binary pixels (levels = 2, c_0 = -1, c_1 = 1): log p(x_i) = k_i l_i - softplus(l_i)."""

    def __init__(self, logits: torch.Tensor, levels: int = 2):
        if levels != 2:
            raise ValueError(f"the Bernoulli output needs binary data (levels=2), got levels={levels}; "
                             "use output='categorical' or 'logistic_mixture' for more levels")
        self.levels, self.logits = 2, logits

    @property
    def shape(self) -> torch.Size:
        return self.logits.shape

    def _reference(self) -> torch.Tensor:
        return self.logits

    def log_prob_elementwise(self, x: torch.Tensor) -> torch.Tensor:
        k = bin_index(x, 2).to(self.logits.dtype)
        return k * self.logits - F.softplus(self.logits)


class DiscretizedGaussian(DiscreteImageDistribution):
    """N(mu, std^2) integrated over each bin:
    p(c_k) = Phi((c_k + h - mu)/std) - Phi((c_k - h - mu)/std), with Phi(+-inf) at the edge bins."""

    def __init__(self, mu: torch.Tensor, log_std: torch.Tensor, levels: int):
        self.levels, self.mu = levels, mu
        self.log_std = torch.clamp(log_std, MIN_LOG_SCALE, MAX_LOG_SCALE)

    @property
    def shape(self) -> torch.Size:
        return self.mu.shape

    def _reference(self) -> torch.Tensor:
        return self.mu

    def log_prob_elementwise(self, x: torch.Tensor) -> torch.Tensor:
        k = bin_index(x, self.levels)
        c = bin_centers(self.levels, x.device, self.mu.dtype)[k]
        half = 1.0 / (self.levels - 1)
        inv_std = torch.exp(-self.log_std)
        upper, lower = (c + half - self.mu) * inv_std, (c - half - self.mu) * inv_std
        middle = log_diff_ndtr(upper, lower)
        first, last = torch.special.log_ndtr(upper), torch.special.log_ndtr(-lower)
        return torch.where(k == 0, first, torch.where(k == self.levels - 1, last, middle))


class DiscretizedLogisticMixture(DiscreteImageDistribution):
    """Mixture of M logistics integrated over each bin (PixelCNN++ / NVAE, channels independent):
    p(c_k) = sum_m pi_m [sigmoid((c_k + h - mu_m)/s_m) - sigmoid((c_k - h - mu_m)/s_m)],
    with sigmoid(+-inf) at the edge bins. Parameters have shape (B, C, H, W, M)."""

    def __init__(self, logit_pi: torch.Tensor, mu: torch.Tensor, log_scale: torch.Tensor, levels: int):
        self.levels, self.mu = levels, mu
        self.log_pi = torch.log_softmax(logit_pi, dim=-1)
        self.log_scale = torch.clamp(log_scale, MIN_LOG_SCALE, MAX_LOG_SCALE)

    @property
    def shape(self) -> torch.Size:
        return self.mu.shape[:-1]

    def _reference(self) -> torch.Tensor:
        return self.mu

    def log_prob_elementwise(self, x: torch.Tensor) -> torch.Tensor:
        k = bin_index(x, self.levels).unsqueeze(-1)
        c = bin_centers(self.levels, x.device, self.mu.dtype)[k]
        half = 1.0 / (self.levels - 1)
        inv_scale = torch.exp(-self.log_scale)
        upper, lower = (c + half - self.mu) * inv_scale, (c - half - self.mu) * inv_scale
        middle = log_diff_sigmoid(upper, lower, 2.0 * half * inv_scale)
        first, last = F.logsigmoid(upper), F.logsigmoid(-lower)
        log_bin = torch.where(k == 0, first, torch.where(k == self.levels - 1, last, middle))
        return torch.logsumexp(self.log_pi + log_bin, dim=-1)


OUTPUTS = ("categorical", "logistic_mixture", "gaussian", "bernoulli")


def output_param_channels(kind: str, levels: int, num_mixtures: int = 3) -> int:
    """Number of network outputs per image channel that ``output_distribution`` consumes."""
    sizes = {"categorical": levels, "logistic_mixture": 3 * num_mixtures, "gaussian": 2, "bernoulli": 1}
    if kind not in sizes:
        raise ValueError(f"unknown output distribution {kind!r}; choose one of {OUTPUTS}")
    return sizes[kind]


def output_distribution(kind: str, params: torch.Tensor, channels: int, levels: int,
                        num_mixtures: int = 3) -> DiscreteImageDistribution:
    """Build the output distribution from a decoder tensor (B, channels * P, H, W), P from
    ``output_param_channels``."""
    b, _, h, w = params.shape
    p = params.reshape(b, channels, output_param_channels(kind, levels, num_mixtures), h, w)
    if kind == "categorical":
        return Categorical(p.permute(0, 1, 3, 4, 2))
    if kind == "bernoulli":
        return Bernoulli(p[:, :, 0], levels)
    if kind == "gaussian":
        return DiscretizedGaussian(p[:, :, 0], p[:, :, 1], levels)
    logit_pi, mu, log_scale = p.permute(0, 1, 3, 4, 2).chunk(3, dim=-1)
    return DiscretizedLogisticMixture(logit_pi, mu, log_scale, levels)
