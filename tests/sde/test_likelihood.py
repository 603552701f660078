"""ODE log-likelihood, bits/dim and the ODE encoder/decoder against closed forms.

For Gaussian data with the exact eps the probability-flow map x_{t_eps} → x_1 is affine (`exact_flow`), so the
density the flow assigns — the N(0, I) prior pulled back to t_eps — is closed form: log N(x_1; 0, I) + log|det|.
It differs from the data's own density at t_eps only by the prior's mismatch at t = 1, log N(x_1) − log p_1(x_1),
an identity that also gives the flow's density for the mixture.
"""

import math

import pytest
import torch

from sde import likelihood
from sde.sampling import NonFiniteError

from .test_sampling import VP, exact_flow, gaussian_64d, mixture_2d, rotated_gaussian

T_EPS = 1e-5


def flow_log_prob(data, x):
    """log N(x_1; 0, I) + Σ log(s_1/s_eps) per eigen-direction: the flow's density of Gaussian data at t_eps."""
    (m_1, s_1), (m_eps, s_eps) = (VP.marginal(torch.tensor(t, dtype=torch.float64)) for t in (1.0, T_EPS))
    lam = data.eigenvalues[0]
    log_det = 0.5 * (torch.log(m_1**2 * lam + s_1**2) - torch.log(m_eps**2 * lam + s_eps**2)).sum()
    return VP.prior_logp(exact_flow(data, x, T_EPS, 1.0)) + log_det


def prior_mismatch(data, x_1):
    """log N(x_1; 0, I) − log p_1(x_1), with p_1 the data diffused to t = 1."""
    m_1, s_1 = VP.marginal(torch.tensor(1.0, dtype=torch.float64))
    return VP.prior_logp(x_1) - data.marginal_log_prob(x_1, m_1, s_1)


def marginal_at_t_eps(data, x):
    m, s = VP.marginal(torch.tensor(T_EPS, dtype=torch.float64))
    return data.marginal_log_prob(x, m, s)


@pytest.mark.parametrize("method", ["dopri5", "rk45"])
@pytest.mark.parametrize("make", [rotated_gaussian, gaussian_64d], ids=["rotated-4d", "diagonal-64d"])
def test_exact_divergence_matches_the_flow_density(make, method):
    data = make()
    x = data.sample(8, generator=torch.Generator().manual_seed(1))
    logp, nfe = likelihood.ode_log_likelihood(data.eps_fn(VP), VP, x, divergence="exact", rtol=1e-6, atol=1e-6,
                                              method=method)
    expected = flow_log_prob(data, x)
    assert (logp - expected).abs().max() / data.dim < 1e-4, "more than 1e-4 nats per dimension off"
    # the closed form itself: the data density at t_eps plus the prior's mismatch at t = 1
    x_1 = exact_flow(data, x, T_EPS, 1.0)
    assert torch.allclose(expected, marginal_at_t_eps(data, x) + prior_mismatch(data, x_1), atol=1e-8)
    assert nfe > 20


def test_exact_divergence_on_the_mixture():
    """The exact flow carries p_{t_eps} to p_1, so log p_flow(x) = log p_{t_eps}(x) + log N(x_1) − log p_1(x_1)."""
    data = mixture_2d()
    x = data.sample(16, generator=torch.Generator().manual_seed(2))
    logp, _ = likelihood.ode_log_likelihood(data.eps_fn(VP), VP, x, divergence="exact", rtol=1e-6, atol=1e-6)
    x_1, _ = likelihood.ode_encode(data.eps_fn(VP), VP, x, rtol=1e-8, atol=1e-8)
    expected = marginal_at_t_eps(data, x) + prior_mismatch(data, x_1)
    assert (logp - expected).abs().max() / data.dim < 1e-4


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_mean_over_repeats_is_unbiased(probe):
    data = rotated_gaussian(dim=8, seed=3)
    x = data.sample(6, generator=torch.Generator().manual_seed(4))
    result = likelihood.ode_log_likelihood(data.eps_fn(VP), VP, x, probe=probe, repeats=16,
                                           generator=torch.Generator().manual_seed(5))
    logp, nfe = result
    expected = flow_log_prob(data, x)
    assert result.stderr.shape == (6,) and bool((result.stderr > 0).all())
    assert bool(((logp - expected).abs() < 3 * result.stderr).all()), f"z = {((logp - expected) / result.stderr)}"
    assert result.logp is logp and result.nfe == nfe


def test_stacked_repeats_are_the_separate_integrations_in_one_solve():
    """repeats = 3 runs the three probes' integrations as one batch: on a fixed-step grid it equals three single
    integrations whose probes come one after the other from the same generator (float32 round-off), in a third
    of the calls."""
    data = rotated_gaussian(dim=8, seed=3)
    x = data.sample(5, generator=torch.Generator().manual_seed(4))
    options = {"method": "rk4", "steps": 12}
    stacked = likelihood.ode_log_likelihood(data.eps_fn(VP), VP, x, repeats=3,
                                            generator=torch.Generator().manual_seed(5), **options)
    generator = torch.Generator().manual_seed(5)
    singles = [likelihood.ode_log_likelihood(data.eps_fn(VP), VP, x, generator=generator, **options)
               for _ in range(3)]
    logps = torch.stack([single.logp for single in singles])
    torch.testing.assert_close(stacked.logp, logps.mean(0), rtol=0, atol=1e-4)
    torch.testing.assert_close(stacked.stderr, logps.std(0) / 3 ** 0.5, rtol=0, atol=1e-4)
    assert stacked.nfe == singles[0].nfe


def test_single_integration_unpacks_and_has_no_stderr():
    data = rotated_gaussian()
    x = data.sample(4, generator=torch.Generator().manual_seed(1))
    result = likelihood.ode_log_likelihood(data.eps_fn(VP), VP, x, generator=torch.Generator().manual_seed(0))
    logp, nfe = result
    assert logp.shape == (4,) and isinstance(nfe, int) and result.stderr is None


def test_round_trip_through_the_ode():
    for data, shape in [(mixture_2d(), (64, 2)), (gaussian_64d(), (16, 4, 4, 4))]:
        x = data.sample(shape[0], generator=torch.Generator().manual_seed(6)).reshape(shape)
        z, nfe_encode = likelihood.ode_encode(data.eps_fn(VP), VP, x, rtol=1e-6, atol=1e-6)
        back, nfe_decode = likelihood.ode_decode(data.eps_fn(VP), VP, z, rtol=1e-6, atol=1e-6)
        assert back.shape == x.shape and (back - x).abs().max() < 1e-3
        assert nfe_encode > 0 and nfe_decode > 0


def test_encoder_follows_the_exact_flow_map():
    data = rotated_gaussian()
    x = data.sample(32, generator=torch.Generator().manual_seed(7))
    z, _ = likelihood.ode_encode(data.eps_fn(VP), VP, x, rtol=1e-7, atol=1e-7)
    assert (z - exact_flow(data, x, T_EPS, 1.0)).abs().max() < 1e-4


def test_bits_per_dim_hand_computed():
    # 256 levels: bins of width Δ = 2/255, offset −log2 Δ = log2 127.5 = 6.994353...; 1.5 bits of density per dim.
    dim = 3072
    nll = torch.tensor([1.5 * dim * math.log(2)])
    assert torch.allclose(likelihood.bits_per_dim(nll, dim, 256), torch.tensor([8.494353]), atol=1e-6)
    # a uniform density on the bins' support [−1 − Δ/2, 1 + Δ/2]^D has log2(levels) bits per dimension
    for levels in (2, 17, 256):
        delta = likelihood.bin_width(levels)
        nll = torch.tensor([dim * math.log(2 + delta)], dtype=torch.float64)
        assert torch.allclose(likelihood.bits_per_dim(nll, dim, levels), torch.tensor([math.log2(levels)],
                                                                                      dtype=torch.float64))


def test_dequantization_stays_in_the_pixel_bin():
    levels = 17
    pixels = torch.randint(0, levels, (500, 3), generator=torch.Generator().manual_seed(0))
    x = 2 * pixels.double() / (levels - 1) - 1
    noisy = likelihood.dequantize(x, levels, generator=torch.Generator().manual_seed(1))
    delta = likelihood.bin_width(levels)
    assert bool(((noisy - x).abs() <= delta / 2).all()) and (noisy - x).std() > delta / 4
    assert torch.equal(torch.round((noisy + 1) / delta).long(), pixels)


def test_ode_bits_per_dim_composes_dequantization_likelihood_and_offset():
    data = rotated_gaussian()
    x = (data.sample(4, generator=torch.Generator().manual_seed(8)) * 8).round() / 8  # 17 levels on a wider range
    bpd, nfe = likelihood.ode_bits_per_dim(data.eps_fn(VP), VP, x, 17, generator=torch.Generator().manual_seed(9),
                                           divergence="exact")
    logp, _ = likelihood.ode_log_likelihood(
        data.eps_fn(VP), VP, likelihood.dequantize(x, 17, torch.Generator().manual_seed(9)), divergence="exact")
    assert torch.allclose(bpd, -logp / (4 * math.log(2)) + math.log2(8), atol=1e-10) and nfe > 0


def test_bad_options_raise_value_errors():
    data = rotated_gaussian()
    x = data.sample(2)
    with pytest.raises(ValueError, match="hutchinson, exact"):
        likelihood.ode_log_likelihood(data.eps_fn(VP), VP, x, divergence="skilling")
    with pytest.raises(ValueError, match="rademacher, gaussian"):
        likelihood.ode_log_likelihood(data.eps_fn(VP), VP, x, probe="sphere")
    with pytest.raises(ValueError, match="repeats"):
        likelihood.ode_log_likelihood(data.eps_fn(VP), VP, x, divergence="exact", repeats=3)
    with pytest.raises(ValueError, match="dopri5"):
        likelihood.ode_log_likelihood(data.eps_fn(VP), VP, x, method="RK45")


@pytest.mark.parametrize("method", ["dopri5", "rk45"])
def test_non_finite_model_output_names_the_time(method):
    data = rotated_gaussian()
    x = data.sample(2, generator=torch.Generator().manual_seed(0))
    eps_fn = data.eps_fn(VP)

    def broken(x, t):
        return torch.where((t > 0.5)[:, None], torch.nan, eps_fn(x, t))

    with pytest.raises(NonFiniteError, match=r"at t = 0\.[5-9]") as info:
        likelihood.ode_log_likelihood(broken, VP, x, method=method)
    assert 0.5 < info.value.t < 0.8
