"""The closed-form Gaussian-mixture score against autograd and scipy densities."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

import sde
from sde.gaussian import GaussianMixture, gaussian


def rotated_gaussian(dim=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    return gaussian(torch.randn(dim, generator=gen, dtype=torch.float64), a @ a.T / dim + 0.1 * torch.eye(dim))


def two_d_mixture():
    means = [[-1.0, 0.5], [1.2, -0.3], [0.0, 1.5]]
    covs = [[[0.2, 0.05], [0.05, 0.1]], [[0.1, 0.0], [0.0, 0.3]], [[0.05, -0.02], [-0.02, 0.08]]]
    return GaussianMixture(means, covs, [0.5, 0.3, 0.2])


@pytest.mark.parametrize("make", [rotated_gaussian, two_d_mixture])
def test_log_prob_matches_scipy(make):
    mix = make()
    x = mix.sample(50, generator=torch.Generator().manual_seed(1))
    m, s = 0.8, 0.6
    expected = np.log(sum(
        w * scipy.stats.multivariate_normal(m * mu.numpy(), m**2 * c.numpy() + s**2 * np.eye(mix.dim)).pdf(x.numpy())
        for w, mu, c in zip(mix.weights, mix.means, mix.covs)))
    assert np.allclose(mix.marginal_log_prob(x, m, s).numpy(), expected, atol=1e-10)


@pytest.mark.parametrize("make", [rotated_gaussian, two_d_mixture])
def test_eps_is_minus_std_times_autograd_score(make):
    mix = make()
    x = mix.sample(32, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    mean_coeff = torch.linspace(0.2, 0.99, 32, dtype=torch.float64)
    std = (1 - mean_coeff**2).sqrt()
    score = torch.autograd.grad(mix.marginal_log_prob(x, mean_coeff, std).sum(), x)[0]
    assert torch.allclose(mix.eps(x.detach(), mean_coeff, std), -std[:, None] * score, atol=1e-10)


def test_samples_have_the_mixture_moments():
    mix = two_d_mixture()
    n = 200_000
    x = mix.sample(n, generator=torch.Generator().manual_seed(3))
    mean = (mix.weights[:, None] * mix.means).sum(0)
    second = (mix.weights[:, None, None] * (mix.covs + mix.means[:, :, None] * mix.means[:, None, :])).sum(0)
    cov = second - mean[:, None] * mean[None, :]
    assert torch.allclose(x.mean(0), mean, atol=4 * cov.diagonal().max().sqrt().item() / math.sqrt(n))
    assert torch.allclose(torch.cov(x.T), cov, atol=0.01)


def test_eps_fns_continuous_and_discrete_agree_on_the_same_noise_level():
    mix = rotated_gaussian()
    vp = sde.VPSDE()
    schedule = vp.discretize(1000)
    x = torch.randn(3, 2, 2, dtype=torch.float64)  # any shape with D = 4 entries
    steps = torch.tensor([1, 400, 900])
    alpha_bar = schedule.alpha_bars[steps - 1]
    t = vp.inv_var(1 - alpha_bar)  # the continuous time with the same σ²
    assert torch.allclose(mix.eps_fn(vp)(x, t), mix.eps_fn_discrete(schedule)(x, steps), atol=1e-8)


@pytest.mark.parametrize("chunk", [sde.gaussian.MIXTURE_CHUNK, 60, 1])  # one pass; 2 rows at a time; 1 row
def test_diagonal_mixture_eps_matches_the_general_mixture(chunk, monkeypatch):
    """The float32 diagonal target (a noise level per row) equals GaussianMixture.eps in float64, whatever the rows
    per cache-sized chunk."""
    monkeypatch.setattr(sde.gaussian, "MIXTURE_CHUNK", chunk)
    gen = torch.Generator().manual_seed(3)
    means = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    variances = 0.05 + torch.rand(5, 6, generator=gen, dtype=torch.float64)
    mixture = GaussianMixture(means, variances)
    x = 1.5 * torch.randn(40, 6, generator=gen, dtype=torch.float64)
    mean_coeff = torch.rand(40, generator=gen, dtype=torch.float64)
    std = (1 - mean_coeff**2).sqrt()
    expected = mixture.eps(x, mean_coeff, std)
    got = sde.gaussian.diagonal_mixture_eps(x.float(), mean_coeff.float(), std.float(), means.float(),
                                            variances.float())
    torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-4)


def test_diagonal_mixture_eps_gradients_match_finite_differences(monkeypatch):
    """Chunked and fused, the target stays differentiable in x, the means and the variances (float64 gradcheck)."""
    monkeypatch.setattr(sde.gaussian, "MIXTURE_CHUNK", 12)  # two rows a chunk (K × D = 6)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64).requires_grad_()
    means = torch.randn(2, 3, generator=gen, dtype=torch.float64).requires_grad_()
    variances = (0.1 + torch.rand(2, 3, generator=gen, dtype=torch.float64)).requires_grad_()
    mean_coeff = torch.rand(5, generator=gen, dtype=torch.float64)
    std = (1 - mean_coeff**2).sqrt()
    assert torch.autograd.gradcheck(
        lambda *args: sde.gaussian.diagonal_mixture_eps(args[0], mean_coeff, std, args[1], args[2]),
        (x, means, variances))


def test_diagonal_mixture_eps_is_the_posterior_mean_of_the_noise():
    """Monte Carlo: x_0 from a 1-D two-component mixture, x_t = m x_0 + σ ε; the average ε of the draws whose x_t falls
    in a narrow bin is the target at the bin's centre (within its sampling error)."""
    gen = torch.Generator().manual_seed(0)
    means, variances = torch.tensor([[-1.0], [1.5]]), torch.tensor([[0.3], [0.05]])
    n, m = 2_000_000, 0.8
    std = math.sqrt(1 - m**2)
    component = torch.randint(0, 2, (n,), generator=gen)
    x0 = means[component, 0] + variances[component, 0].sqrt() * torch.randn(n, generator=gen)
    noise = torch.randn(n, generator=gen)
    x_t = m * x0 + std * noise
    for centre in (-1.0, 0.2, 1.0):
        inside = (x_t - centre).abs() < 0.01
        expected = noise[inside].mean()
        error = 4 * noise[inside].std() / inside.sum().sqrt()
        got = sde.gaussian.diagonal_mixture_eps(torch.tensor([[centre]]), torch.tensor([m]), torch.tensor([std]),
                                                means, variances)
        assert abs(got.item() - expected.item()) < error + 0.01  # + the bin's width: the target moves ~1 per unit x
