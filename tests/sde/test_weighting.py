"""Time sampling: every scheme's weighted Monte-Carlo estimate is the integral it claims to be."""

import math

import pytest
import scipy.integrate
import torch

import sde

TEST_FUNCTIONS = {
    "one": lambda t: torch.ones_like(t),
    "t_squared": lambda t: t**2,
    "cos": lambda t: torch.cos(3 * t) + 1.5,
    "vanishing_at_one": lambda t: (1 - t) ** 2,
}
T_EPS = 1e-2


def quadrature(fn) -> float:
    """∫_{t_eps}^1 fn(t) dt in float64 with breakpoints where weights change fast."""
    scalar = lambda s: fn(torch.tensor(s, dtype=torch.float64)).item()  # noqa: E731
    points = [0.02, 0.05, 0.1, 0.5, 0.9, 0.99, 0.999]
    return scipy.integrate.quad(scalar, T_EPS, 1.0, points=points, limit=500, epsabs=0, epsrel=1e-10)[0]


@pytest.mark.parametrize("schedule", ["linear", "cosine", "geometric"])
@pytest.mark.parametrize("scheme", sorted(sde.SCHEMES))
def test_weighted_estimate_matches_quadrature(schedule, scheme):
    vp = sde.VPSDE(schedule)
    objective, _ = sde.SCHEMES[scheme]
    n = 1 << 18
    draw = sde.sample_time(vp, scheme, n, T_EPS, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert draw.t.min() >= T_EPS and draw.t.max() <= 1.0
    for name, f in TEST_FUNCTIONS.items():
        for weight, target in ((draw.weight, lambda t: sde.objective_weight(vp, objective, t)),
                               (draw.weight_ll, lambda t: sde.likelihood_weight(vp, t))):
            values = weight * f(draw.t)
            estimate, standard_error = values.mean().item(), values.std().item() / math.sqrt(n)
            exact = quadrature(lambda t, target=target, f=f: target(t) * f(t))
            assert abs(estimate - exact) <= 3 * standard_error + 1e-9, (name, estimate, exact, standard_error)


def dsm_losses(vp, scheme, n, data_std=0.5, dim=16, seed=0):
    """Per-sample likelihood-weighted DSM loss weight_ll·‖ε − ε*(x_t, t)‖² for x_0 ~ N(0, s²I), ε* exact.

    For Gaussian data, E[ε | x_t] = σ_t x_t/(m_t² s² + σ_t²), the best possible ε-prediction.
    """
    gen = torch.Generator().manual_seed(seed)
    draw = sde.sample_time(vp, scheme, n, T_EPS, generator=gen, dtype=torch.float64)
    x0 = data_std * torch.randn(n, dim, generator=gen, dtype=torch.float64)
    noise = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    mean_coeff, std = vp.marginal(draw.t)
    xt = vp.perturb(x0, draw.t, noise)
    eps_exact = (std / (mean_coeff**2 * data_std**2 + std**2))[:, None] * xt
    return draw.weight_ll * (noise - eps_exact).pow(2).sum(1)


@pytest.mark.parametrize("schedule", ["linear", "geometric"])
def test_ll_iw_reduces_variance_of_likelihood_dsm_loss(schedule):
    vp = sde.VPSDE(schedule)
    n = 1 << 17
    uniform, iw = dsm_losses(vp, "ll_uniform", n), dsm_losses(vp, "ll_iw", n)
    # same expectation (the cross-entropy up to a constant) ...
    pooled_error = math.sqrt((uniform.var() + iw.var()).item() / n)
    assert abs(uniform.mean().item() - iw.mean().item()) <= 4 * pooled_error
    # ... at a fraction of the variance
    ratio = (uniform.var() / iw.var()).item()
    print(f"{schedule}: var(ll_uniform)/var(ll_iw) = {ratio:.1f}")
    assert ratio > 5


def test_unknown_scheme_and_bad_eps():
    vp = sde.VPSDE()
    with pytest.raises(ValueError, match="ll_iw"):
        sde.sample_time(vp, "importance", 4)
    with pytest.raises(ValueError, match="t_eps"):
        sde.sample_time(vp, "ll_iw", 4, t_eps=0.0)
    uniform = sde.sample_time(vp, "uniform", 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(uniform.weight, torch.full((8,), 1 - T_EPS))
    assert uniform.t.dtype == torch.float32
