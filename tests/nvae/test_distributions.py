"""Numbers of the latent Normal and the discrete image likelihoods."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from nvae.distributions import (
    Bernoulli,
    Categorical,
    DiscretizedGaussian,
    DiscretizedLogisticMixture,
    Normal,
    bin_centers,
    bin_index,
    output_distribution,
    output_param_channels,
)

SHAPE = (3, 2, 4, 4)


def _random_dists(levels: int, dtype=torch.float32):
    """Every discrete likelihood with random parameters, including sharp, broad and off-range ones."""
    g = torch.Generator().manual_seed(levels)

    def r(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g)).to(dtype)

    log_scale = torch.linspace(-9, 4, math.prod(SHAPE)).view(SHAPE).to(dtype)
    mu = 1.5 * r(*SHAPE)
    dists = {
        "categorical": Categorical(r(*SHAPE, levels, scale=3.0)),
        "gaussian": DiscretizedGaussian(mu, log_scale, levels),
        "logistic_mixture": DiscretizedLogisticMixture(r(*SHAPE, 4), r(*SHAPE, 4, scale=1.5),
                                                       log_scale[..., None] + r(*SHAPE, 4), levels),
    }
    if levels == 2:
        dists["bernoulli"] = Bernoulli(r(*SHAPE, scale=4.0))
    return dists


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_discrete_likelihoods_sum_to_one_over_all_bins(levels):
    for name, dist in _random_dists(levels).items():
        total = dist.bin_log_probs().exp().sum(-1)  # every bin evaluated through log_prob_elementwise
        assert torch.allclose(total, torch.ones_like(total), atol=1e-5), (name, (total - 1).abs().max())


@pytest.mark.parametrize("levels", [17, 256])
def test_bin_log_probs_are_log_prob_at_each_bin(levels):
    for name, dist in _random_dists(levels).items():
        table = dist.bin_log_probs()
        k = torch.randint(0, levels, SHAPE, generator=torch.Generator().manual_seed(1))
        x = bin_centers(levels)[k]
        expected = table.gather(-1, k.unsqueeze(-1)).squeeze(-1).flatten(1).sum(1)
        assert torch.allclose(dist.log_prob(x), expected, atol=1e-4), name


def test_logistic_mixture_matches_numerical_integration_of_its_density():
    levels = 17
    logit_pi = torch.tensor([[0.3, -1.0, 0.5]], dtype=torch.float64)
    mu = torch.tensor([[-0.9, 0.1, 0.55]], dtype=torch.float64)
    log_scale = torch.tensor([[-2.5, -1.0, -4.0]], dtype=torch.float64)
    dist = DiscretizedLogisticMixture(logit_pi.view(1, 1, 1, 1, 3), mu.view(1, 1, 1, 1, 3),
                                      log_scale.view(1, 1, 1, 1, 3), levels)
    pi = torch.softmax(logit_pi, -1).numpy()[0]
    loc, scale = mu.numpy()[0], np.exp(log_scale.numpy()[0])

    def density(t):
        return float(sum(p * stats.logistic.pdf(t, m, s) for p, m, s in zip(pi, loc, scale)))

    half = 1.0 / (levels - 1)
    for k in range(levels):
        c = 2.0 * k / (levels - 1) - 1.0
        lo, hi = (-np.inf if k == 0 else c - half), (np.inf if k == levels - 1 else c + half)
        breaks = [t for t in loc if lo < t < hi] or None
        mass = sum(integrate.quad(density, a, b, epsabs=1e-14, epsrel=1e-12, limit=200)[0]
                   for a, b in _pieces(lo, hi, breaks))
        log_p = dist.log_prob(torch.full((1, 1, 1, 1), c, dtype=torch.float64)).item()
        assert log_p == pytest.approx(math.log(mass), abs=1e-6, rel=1e-6), k


def _pieces(lo, hi, breaks):
    """Split [lo, hi] at the mixture's modes so quad sees each peak at an endpoint."""
    points = [lo, *(sorted(breaks) if breaks else []), hi]
    return list(zip(points[:-1], points[1:]))


def test_discretized_gaussian_matches_normal_cdf_differences():
    levels = 17
    mu, log_std = torch.tensor(0.23, dtype=torch.float64), torch.tensor(-1.7, dtype=torch.float64)
    dist = DiscretizedGaussian(mu.view(1, 1, 1, 1), log_std.view(1, 1, 1, 1), levels)
    half = 1.0 / (levels - 1)
    for k, c in enumerate(bin_centers(levels, dtype=torch.float64).tolist()):
        hi = 1.0 if k == levels - 1 else stats.norm.cdf(c + half, 0.23, math.exp(-1.7))
        lo = 0.0 if k == 0 else stats.norm.cdf(c - half, 0.23, math.exp(-1.7))
        got = dist.log_prob(torch.full((1, 1, 1, 1), c, dtype=torch.float64)).item()
        assert got == pytest.approx(math.log(hi - lo), rel=1e-8)


def test_far_tail_bins_stay_finite_and_differentiable():
    mu = torch.tensor([[[[5.0, -5.0]]]], requires_grad=True)
    log_s = torch.full((1, 1, 1, 2), -7.0, requires_grad=True)
    x = torch.tensor([[[[-0.5, 0.5]]]])
    for dist in (DiscretizedGaussian(mu, log_s, 17),
                 DiscretizedLogisticMixture(torch.zeros(1, 1, 1, 2, 1), mu[..., None], log_s[..., None], 17)):
        lp = dist.log_prob(x)
        lp.sum().backward()
        assert torch.isfinite(lp).all() and torch.isfinite(mu.grad).all() and torch.isfinite(log_s.grad).all()
        # 5.5 widths of e⁻⁷ from the bins: far in the tails, and moving a mean toward its pixel raises the mass
        assert lp.item() < -1e3
        assert mu.grad[..., 0].item() < 0 < mu.grad[..., 1].item()
        mu.grad = log_s.grad = None


def test_categorical_samples_follow_their_probabilities():
    torch.manual_seed(0)
    logits = torch.tensor([2.0, 0.0, -1.0, 1.0, -3.0]).expand(20000, 1, 1, 1, 5)
    dist = Categorical(logits)
    freq = torch.bincount(bin_index(dist.sample().flatten(), 5), minlength=5).double() / 20000
    p = torch.softmax(logits[0, 0, 0, 0].double(), 0)
    assert torch.allclose(freq, p, atol=4 * (p * (1 - p) / 20000).sqrt().max().item())
    expected_mean = (p * bin_centers(5, dtype=torch.float64)).sum().item()
    assert dist.mean()[0].item() == pytest.approx(expected_mean, abs=1e-6)


def test_bin_index_inverts_bin_centers():
    for levels in (2, 17, 256):
        k = torch.arange(levels)
        assert torch.equal(bin_index(bin_centers(levels), levels), k)


def test_output_distribution_shapes_and_errors():
    params = torch.randn(2, 3 * output_param_channels("logistic_mixture", 256, 5), 4, 4)
    dist = output_distribution("logistic_mixture", params, 3, 256, 5)
    assert dist.shape == (2, 3, 4, 4)
    assert dist.mean().abs().max() <= 1.0
    with pytest.raises(ValueError, match="levels=2"):
        Bernoulli(torch.zeros(1), levels=17)
    with pytest.raises(ValueError, match="choose one of"):
        output_param_channels("poisson", 17)


def test_normal_log_prob_matches_density():
    mu, log_std = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    z = torch.randn(5, 3, dtype=torch.float64)
    expected = stats.norm.logpdf(z.numpy(), mu.numpy(), np.exp(log_std.numpy()))
    np.testing.assert_allclose(Normal(mu, log_std).log_prob(z).numpy(), expected, rtol=1e-12)


def test_normal_kl_matches_monte_carlo():
    torch.manual_seed(0)
    f64 = {"dtype": torch.float64}
    q = Normal(torch.tensor([0.3, -1.2, 2.0], **f64), torch.tensor([-0.5, 0.4, -1.5], **f64))
    p = Normal(torch.tensor([0.0, 0.5, 1.0], **f64), torch.tensor([0.2, 0.0, 0.7], **f64))
    z = q.mu + q.std * torch.randn(400_000, 3, dtype=torch.float64)
    log_ratio = q.log_prob(z) - p.log_prob(z)
    mc, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(z.shape[0])
    assert ((mc - q.kl(p)).abs() < 4 * se).all(), (mc, q.kl(p), se)


def test_normal_sample_temperature_scales_the_spread():
    torch.manual_seed(0)
    n = Normal(torch.full((100_000,), 1.0), torch.full((100_000,), math.log(2.0)))
    assert n.sample(0.5).std().item() == pytest.approx(1.0, rel=0.02)
    assert torch.equal(n.sample(0.0), n.mu)


def test_sampling_non_finite_probabilities_raises_floating_point_error():
    """A decoder's NaN logits (e.g. from latents of size ~1e30) raise FloatingPointError, which the commands report as
    diverged sampling (exit status 3), instead of torch.multinomial's RuntimeError."""
    logits = torch.zeros(1, 1, 2, 2, 17)
    logits[0, 0, 1, 1, 3] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite value in the decoder's output"):
        Categorical(logits).sample()
