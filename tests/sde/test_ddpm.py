"""DDPMSchedule against the DDPM paper's two posterior-mean forms and Bayes' rule by quadrature."""

import math

import pytest
import torch

import sde


@pytest.fixture(scope="module")
def schedule():
    return sde.DDPMSchedule.linear(1000)


def test_linear_and_cosine_constructors():
    linear = sde.DDPMSchedule.linear(1000, 1e-4, 0.02)
    assert linear.betas.dtype == torch.float64
    assert linear.betas[0].item() == pytest.approx(1e-4) and linear.betas[-1].item() == pytest.approx(0.02)
    assert torch.allclose(linear.alpha_bars, torch.cumprod(1 - linear.betas, 0))
    cosine = sde.DDPMSchedule.cosine(1000)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert cosine.alpha_bars[499].item() == pytest.approx(f(500) / f(0), rel=1e-10)
    assert cosine.betas.max().item() <= 0.999


def test_q_sample_is_closed_form_marginal(schedule):
    x0 = torch.randn(3, 2, 4, dtype=torch.float64)
    noise = torch.randn_like(x0)
    t = torch.tensor([1, 500, 1000])
    xt = schedule.q_sample(x0, t, noise)
    for i, step in enumerate(t.tolist()):
        a = schedule.alpha_bars[step - 1]
        assert torch.allclose(xt[i], a.sqrt() * x0[i] + (1 - a).sqrt() * noise[i], atol=1e-14)


def test_two_forms_of_posterior_mean_agree(schedule):
    """μ̃(x_t, x_0) = coefficients form  ==  (x_t − β_t/√(1−ᾱ_t) ε)/√α_t with ε the true noise."""
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 5, dtype=torch.float64, generator=gen)
    noise = torch.randn(64, 5, dtype=torch.float64, generator=gen)
    t = torch.randint(1, 1001, (64,), generator=gen)
    xt = schedule.q_sample(x0, t, noise)
    mean, var, log_var = schedule.q_posterior(x0, xt, t)
    eps = schedule.eps_from_x0(xt, t, x0)
    assert torch.allclose(eps, noise, atol=1e-10)
    eps_mean, _, _ = schedule.p_mean_var(eps, xt, t)
    assert (mean - eps_mean).abs().max().item() < 1e-10
    clipped_mean, _, _ = schedule.p_mean_var(eps, xt, t, clip_x0=(-10.0, 10.0))
    assert (mean - clipped_mean).abs().max().item() < 1e-10
    assert torch.allclose(schedule.x0_from_eps(xt, t, eps), x0, atol=1e-9)


@pytest.mark.parametrize("step", [2, 10, 300, 1000])
def test_q_posterior_matches_bayes_rule_by_quadrature(schedule, step):
    """q(x_{t−1}|x_t,x_0) ∝ q(x_t|x_{t−1}) q(x_{t−1}|x_0), normalised numerically on a grid."""
    beta, alpha_bar_prev = schedule.betas[step - 1].item(), schedule.alpha_bars_prev[step - 1].item()
    alpha_bar = schedule.alpha_bars[step - 1].item()
    x0 = 0.6
    xt = math.sqrt(alpha_bar) * x0 - 0.7 * math.sqrt(1 - alpha_bar)  # a typical x_t given x_0
    center = math.sqrt(alpha_bar_prev) * x0
    width = 12 * math.sqrt(max(1 - alpha_bar_prev, 1e-12))
    grid = torch.linspace(center - width, center + width, 400001, dtype=torch.float64)
    log_prior = -0.5 * (grid - math.sqrt(alpha_bar_prev) * x0) ** 2 / (1 - alpha_bar_prev)
    log_lik = -0.5 * (xt - math.sqrt(1 - beta) * grid) ** 2 / beta
    density = torch.softmax(log_prior + log_lik, 0)
    numeric_mean = (density * grid).sum().item()
    numeric_var = (density * (grid - numeric_mean) ** 2).sum().item()
    mean, var, log_var = schedule.q_posterior(torch.tensor([x0], dtype=torch.float64),
                                              torch.tensor([xt], dtype=torch.float64), step)
    assert mean.item() == pytest.approx(numeric_mean, abs=1e-7 + 1e-6 * abs(numeric_mean))
    assert var.item() == pytest.approx(numeric_var, rel=1e-5)
    assert log_var.item() == pytest.approx(math.log(numeric_var), abs=1e-5)


def test_posterior_variance_at_step_one_is_zero_with_clipped_log(schedule):
    x = torch.zeros(2, 3, dtype=torch.float64)
    _, var, log_var = schedule.q_posterior(x, x, 1)
    assert var.item() == 0.0
    assert log_var.item() == pytest.approx(math.log(schedule.posterior_var[1].item()))


def test_reverse_variances(schedule):
    x = torch.zeros(1, 2, dtype=torch.float64)
    t = 500
    _, small, _ = schedule.p_mean_var(x, x, t, "small")
    _, large, _ = schedule.p_mean_var(x, x, t, "large")
    beta, ab, ab_prev = schedule.betas[t - 1], schedule.alpha_bars[t - 1], schedule.alpha_bars_prev[t - 1]
    assert small.item() == pytest.approx(((1 - ab_prev) / (1 - ab) * beta).item(), rel=1e-12)
    assert large.item() == pytest.approx(beta.item(), rel=1e-12)
    with pytest.raises(ValueError, match="small"):
        schedule.p_mean_var(x, x, t, "medium")


def test_dtype_follows_input_and_steps_are_checked(schedule):
    x = torch.randn(2, 3)
    assert schedule.q_sample(x, torch.tensor([1, 2]), x).dtype == torch.float32
    with pytest.raises(ValueError, match=r"1\.\.1000"):
        schedule.q_sample(x, torch.tensor([0, 2]), x)
    with pytest.raises(ValueError, match="integers"):
        schedule.q_sample(x, torch.tensor([0.5, 2.0]), x)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        sde.DDPMSchedule(torch.tensor([0.1, 1.5]))
