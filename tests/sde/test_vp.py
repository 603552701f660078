"""VPSDE against closed forms and the Normal density (the simulated forward SDE: test_sdes.py)."""

import math

import pytest
import torch

import sde

SCHEDULES = ["linear", "cosine", "geometric"]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_inv_var_inverts_var(schedule):
    vp = sde.VPSDE(schedule)
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    assert torch.allclose(vp.inv_var(vp.var(t)), t, atol=1e-9, rtol=0)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_beta_is_derivative_of_integral_and_marginal_is_consistent(schedule):
    vp = sde.VPSDE(schedule)
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    numeric = (vp.integral(t + h) - vp.integral(t - h)) / (2 * h)
    assert torch.allclose(vp.beta(t), numeric, rtol=1e-6)
    mean_coeff, std = vp.marginal(t)
    assert torch.allclose(mean_coeff**2 + std**2, torch.ones_like(t), atol=1e-12)
    assert torch.allclose(vp.diffusion(t) ** 2, vp.beta(t))


def test_variance_is_accurate_near_zero():
    vp = sde.VPSDE("linear")
    t = torch.tensor(1e-7, dtype=torch.float64)
    exact = -math.expm1(-(0.1 * 1e-7 + 0.5 * 19.9 * 1e-14))
    assert vp.var(t).item() == pytest.approx(exact, rel=1e-12)
    # float32 input: computed in float64, returned in float32, still relatively exact
    assert vp.var(torch.tensor(1e-7)).item() == pytest.approx(exact, rel=1e-6)
    assert vp.var(torch.tensor(1e-7)).dtype == torch.float32


def test_geometric_matches_lsgm_closed_form():
    vp = sde.VPSDE("geometric", sigma2_min=1e-4, sigma2_max=0.99)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    ratio = 0.99 / 1e-4
    assert torch.allclose(vp.var(t), 1e-4 * ratio**t - 1e-4, rtol=1e-12)
    g2 = 1e-4 * ratio**t * math.log(ratio) / (1 - 1e-4 * ratio**t + 1e-4)
    assert torch.allclose(vp.beta(t), g2, rtol=1e-12)


def test_cosine_matches_improved_ddpm_shape():
    vp = sde.VPSDE("cosine")
    s = 0.008
    alpha_bar_end = 1 / (1 + math.exp(10))
    assert vp.alpha_bar(1.0).item() == pytest.approx(alpha_bar_end, rel=1e-5)
    # up to the time rescaling κ, ᾱ(t) is iDDPM's cos² ratio
    t = torch.linspace(0, 1, 5, dtype=torch.float64)
    phi = (vp.schedule.kappa * t + s) / (1 + s) * math.pi / 2
    expected = torch.cos(phi) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2
    assert torch.allclose(vp.alpha_bar(t), expected, rtol=1e-10)


def test_perturb_and_drift_broadcast_over_any_shape():
    vp = sde.VPSDE()
    x0 = torch.randn(4, 2, 3, 5)
    noise = torch.randn_like(x0)
    t = torch.tensor([0.1, 0.4, 0.7, 1.0])
    xt = vp.perturb(x0, t, noise)
    mean_coeff, std = vp.marginal(t)
    for i in range(4):
        assert torch.allclose(xt[i], mean_coeff[i] * x0[i] + std[i] * noise[i])
        assert torch.allclose(vp.drift(x0, t)[i], -0.5 * vp.beta(t[i]) * x0[i])
    x2 = torch.randn(6, 3)
    assert torch.allclose(vp.perturb(x2, 0.3, x2), vp.perturb(x2, torch.full((6,), 0.3), x2))


def test_prior_logp_is_normal_density():
    vp = sde.VPSDE()
    z = vp.prior_sample((5, 3, 4), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum((1, 2))
    assert torch.allclose(vp.prior_logp(z), expected, atol=1e-12)


def test_discretize_gives_ddpm_betas_and_matches_continuous_marginal():
    vp = sde.VPSDE("linear", 0.1, 20.0)
    schedule = vp.discretize(1000)
    ddpm = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    assert (schedule.betas - ddpm).abs().max().item() < 1e-12
    steps = torch.arange(1, 1001, dtype=torch.float64)
    # ∏(1 − β_i) vs exp(−∫β): the products differ by Σβ²/2 (≤ 0.07 in log at i = T) — agreement in √ᾱ:
    assert (schedule.alpha_bars.sqrt() - vp.alpha_bar(steps / 1000).sqrt()).abs().max().item() < 2e-3
    for schedule_name in ["cosine", "geometric"]:
        other = sde.VPSDE(schedule_name)
        assert torch.allclose(other.discretize(500).alpha_bars, other.alpha_bar(torch.arange(1, 501) / 500.0).double(),
                              rtol=1e-5)


def test_bad_input_raises_value_error_naming_the_allowed_values():
    with pytest.raises(ValueError, match="linear"):
        sde.VPSDE("quadratic")
    with pytest.raises(ValueError, match="positive"):
        sde.VPSDE("linear", beta_min=-0.1)
    with pytest.raises(ValueError, match="positive"):
        sde.VPSDE("linear", beta_min=0.0)
    vp = sde.VPSDE()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        vp.marginal(torch.tensor([0.5, 1.2]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        vp.beta(-0.1)
    with pytest.raises(ValueError, match="variance"):
        vp.inv_var(torch.tensor([1.5]))
    with pytest.raises(ValueError, match="integer"):
        vp.discretize(1.5)
