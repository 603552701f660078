"""Every SDE kind (VP on three schedules, sub-VP, VE) against independent computations: the moment ODEs
integrated numerically, a simulated forward SDE, closed forms, and Gaussian data, whose exact score makes the
ODE likelihood and the samplers' output known in closed form."""

import math

import numpy as np
import pytest
import scipy.integrate
import torch
import torchsde

import sde
from sde import likelihood, sampling
from sde.gaussian import gaussian
from sde.grids import edm_grid, log_snr_grid, quadratic_grid, uniform_grid

from .test_sampling import assert_moments, gaussian_2d

CASES = {
    "vp-linear": sde.VPSDE("linear"),
    "vp-cosine": sde.VPSDE("cosine"),
    "vp-geometric": sde.VPSDE("geometric"),
    "subvp": sde.SubVPSDE(),
    "ve": sde.VESDE(),
}
NEW = ["subvp", "ve"]


def t64(values):
    return torch.as_tensor(values, dtype=torch.float64)


# --- the SDE against its own moment equations ------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_marginal_solves_the_moment_odes(name):
    """dm/dt = f m, dσ²/dt = 2fσ² + g² from m = 1, σ² = 0 at t = 0, integrated in float64 (rtol 1e-11)."""
    process = CASES[name]

    def rhs(t, y):
        c = process.coefficients(t64(t))
        return [float(c.drift_coeff) * y[0], 2 * float(c.drift_coeff) * y[1] + float(c.diffusion_squared)]

    times = np.array([0.01, 0.1, 0.3, 0.6, 0.9, 1.0])
    solution = scipy.integrate.solve_ivp(rhs, (0.0, 1.0), [1.0, 0.0], method="DOP853", t_eval=times, rtol=1e-11,
                                         atol=1e-14)
    mean_coeff, std = process.marginal(t64(times))
    assert np.allclose(solution.y[0], mean_coeff.numpy(), rtol=1e-8, atol=1e-12)
    assert np.allclose(solution.y[1], (std**2).numpy(), rtol=1e-8, atol=1e-12)


class ForwardSDE(torch.nn.Module):
    """dx = f(t)x dt + g(t) dW as a torchsde SDE (Itô, diagonal noise), through the public interface."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, process):
        super().__init__()
        self.process = process

    def f(self, t, x):
        return self.process.drift(x, t.to(x.dtype))

    def g(self, t, x):
        return self.process.diffusion(t.to(x.dtype)).expand_as(x)


def simulate_forward(process, x0, times, resolution=0.05):
    """Stochastic Runge–Kutta (strong order 1.5 for additive noise) from t = 0 through `times`.

    The rates grow steeply near t = 1 (β to ~900 for the geometric schedule; g²/σ² ≈ 17 throughout for VE), so
    the time axis is cut into pieces and each takes dt ≤ resolution/rate at the piece's end, rate = max(2|f|,
    g²/max(σ², 1)): the relative change of the mean and of the variance per step stays below `resolution`.
    """
    fine = sorted(set(times) | {0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999})
    out, x = {}, x0
    for a, b in zip(fine[:-1], fine[1:]):
        c = process.coefficients(t64(b))
        rate = max(2 * abs(float(c.drift_coeff)), float(c.diffusion_squared) / max(float(c.std) ** 2, 1.0))
        ts = torch.tensor([a, b], dtype=x.dtype)
        x = torchsde.sdeint(ForwardSDE(process), x, ts, method="srk", dt=min(1e-2, resolution / rate))[-1]
        if b in times:
            out[b] = x
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_marginal_matches_simulated_forward_sde(name):
    """Monte-Carlo mean and variance of 4096 paths within 4 standard errors of N(m_t x_0, σ²_t)."""
    torch.manual_seed(0)
    process = CASES[name]
    n = 4096
    x0 = torch.tensor([1.5, -0.7, 0.0], dtype=torch.float64).expand(n, 3).contiguous()
    times = [0.1, 0.5, 1.0]
    paths = simulate_forward(process, x0, times)
    for t in times:
        xt = paths[t]
        mean_coeff, std = process.marginal(t64(t))
        mean_error = (xt.mean(0) - mean_coeff * x0[0]).abs()
        assert (mean_error <= 4 * std / math.sqrt(n)).all(), (t, mean_error)
        var_error = (xt.var(0) - std**2).abs()
        assert (var_error <= 4 * std**2 * math.sqrt(2 / (n - 1))).all(), (t, var_error)


# --- closed forms ----------------------------------------------------------------------------------------------
def test_subvp_closed_forms():
    """Song et al. 2021, eq. 29: std = 1 − e^{−B}, g² = β(1 − e^{−2B}), mean e^{−B/2}, B = 0.1t + 9.95t²."""
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    big_b = 0.1 * t + 0.5 * 19.9 * t**2
    process = CASES["subvp"]
    mean_coeff, std = process.marginal(t)
    assert torch.allclose(std, 1 - torch.exp(-big_b), rtol=1e-12, atol=0)
    assert torch.allclose(mean_coeff, torch.exp(-big_b / 2), rtol=1e-12)
    assert torch.allclose(process.diffusion(t) ** 2, (0.1 + 19.9 * t) * (1 - torch.exp(-2 * big_b)), rtol=1e-12, atol=0)
    vp = CASES["vp-linear"]
    assert bool((std[1:] ** 2 < vp.var(t[1:])).all())  # strictly below VP's variance


def test_ve_closed_forms():
    """σ(t) = 0.01·5000^t: σ²_t = σ(t)² − σ²_min, g² = dσ²/dt (central differences, h = 1e-6), mean 1."""
    process = CASES["ve"]
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    sigma = 0.01 * 5000.0**t
    mean_coeff, std = process.marginal(t)
    assert torch.equal(mean_coeff, torch.ones_like(t))
    assert torch.allclose(std**2, sigma**2 - 1e-4, rtol=1e-12)
    h = 1e-6
    numeric = ((0.01 * 5000.0 ** (t + h)) ** 2 - (0.01 * 5000.0 ** (t - h)) ** 2) / (2 * h)
    assert torch.allclose(process.diffusion(t) ** 2, numeric, rtol=1e-7)
    assert process.var(t64(1e-9)).item() == pytest.approx(1e-4 * math.expm1(2e-9 * math.log(5000)), rel=1e-12)


@pytest.mark.parametrize("name", list(CASES))
def test_log_snr_inverse_and_prior(name):
    process = CASES[name]
    t = torch.linspace(1e-4, 1, 1001, dtype=torch.float64)
    log_snr = process.log_snr(t)
    mean_coeff, std = process.marginal(t)
    assert torch.allclose(log_snr, torch.log(mean_coeff**2 / std**2), rtol=1e-12, atol=1e-12)
    assert bool((log_snr.diff() < 0).all())
    assert torch.allclose(process.time_of_log_snr(log_snr), t, rtol=0, atol=1e-9)
    # the prior is N(0, prior_std² I), its variance within 2% of the marginal's at T (geometric VP ends at 0.99)
    z = process.prior_sample((5, 3, 4), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = torch.distributions.Normal(0.0, process.prior_std).log_prob(z).sum((1, 2))
    assert torch.allclose(process.prior_log_prob(z), expected, atol=1e-12)
    assert abs(process.var(1.0).item() / process.prior_std**2 - 1) < 0.02


# --- grids -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_grids_decrease_from_T_to_t_eps_with_their_spacing(name):
    process = CASES[name]
    grids = {"uniform": (uniform_grid(8, 1e-3), lambda t: t), "quadratic": (quadratic_grid(8, 1e-3), torch.sqrt),
             "log_snr": (log_snr_grid(process, 8, 1e-3), process.log_snr),
             "edm": (edm_grid(process, 8, 1e-3, rho=7.0), lambda t: torch.exp(-process.log_snr(t) / 14))}
    for grid_name, (times, spaced) in grids.items():
        assert times.dtype == torch.float64 and times.shape == (9,), grid_name
        assert times[0] == 1.0 and times[-1] == 1e-3 and bool((times.diff() < 0).all()), grid_name
        steps = spaced(times).diff()
        assert torch.allclose(steps, steps.mean().expand(8), rtol=1e-7), grid_name
    with pytest.raises(ValueError, match="steps"):
        uniform_grid(0, 1e-3)
    with pytest.raises(ValueError, match="t_eps"):
        edm_grid(process, 4, 0.0)


# --- Gaussian data N(μ, s²I): exact likelihood and sampler moments -----------------------------------------------
def isotropic_gaussian(dim=4, scale=0.5):
    mean = torch.linspace(-1.0, 1.0, dim, dtype=torch.float64)
    return gaussian(mean, torch.full((dim,), scale**2, dtype=torch.float64))


def flow_log_prob(process, x, scale=0.5, t_eps=1e-5):
    """The flow's density of N(μ, s²I) data at t_eps, and x_1: each coordinate keeps its standardised value,
    x_1 = m_1μ + (s_1/s_ε)(x − m_εμ) with s_t² = m_t²s² + σ_t², so log p = log π(x_1) + D log(s_1/s_ε)."""
    mu = torch.linspace(-1.0, 1.0, x.shape[1], dtype=torch.float64)
    (m_1, sigma_1), (m_eps, sigma_eps) = (process.marginal(t64(t)) for t in (1.0, t_eps))
    s_1, s_eps = (m_1**2 * scale**2 + sigma_1**2).sqrt(), (m_eps**2 * scale**2 + sigma_eps**2).sqrt()
    x_1 = m_1 * mu + (s_1 / s_eps) * (x - m_eps * mu)
    return process.prior_log_prob(x_1) + x.shape[1] * torch.log(s_1 / s_eps), x_1


@pytest.mark.parametrize("name", list(CASES))
def test_ode_likelihood_is_the_exact_flow_density(name):
    """Exact divergence, dopri5 at tolerance 1e-6: within 1e-4 nats per dimension of the closed form."""
    process, data = CASES[name], isotropic_gaussian()
    x = data.sample(8, generator=torch.Generator().manual_seed(1))
    logp, nfe = likelihood.ode_log_likelihood(data.eps_fn(process), process, x, divergence="exact", rtol=1e-6,
                                              atol=1e-6)
    expected, x_1 = flow_log_prob(process, x)
    assert (logp - expected).abs().max() / data.dim < 1e-4 and nfe > 20
    # the closed form is the data's density at t_eps plus the prior's mismatch at T, log π(x_1) − log p_1(x_1)
    (m_1, sigma_1), (m_eps, sigma_eps) = (process.marginal(t64(t)) for t in (1.0, 1e-5))
    mismatch = process.prior_log_prob(x_1) - data.marginal_log_prob(x_1, m_1, sigma_1)
    assert torch.allclose(expected, data.marginal_log_prob(x, m_eps, sigma_eps) + mismatch, atol=1e-9)


# allowance (a fraction of σ, see `assert_moments`): about twice the largest bias measured with 10⁵ samples on
# `gaussian_2d` (mean | covariance, in σ): sub-VP ode .006|.003, sde .010|.004, heun (50 points) .006|.027,
# dpm2m (50 points) .006|.014, pc (500 steps) .003|.052; VE ode .019|.004, sde .005|.010, heun .019|.017,
# dpm2m .019|.009, pc .003|.052. VE's mean bias of the deterministic samplers is its prior's: N(0, σ²_max) lacks the
# data's mean μ, which the flow carries to −μ/σ_max ≈ 0.02σ.
NEW_SAMPLERS = {
    "ode": (lambda p: {"times": uniform_grid(1, 1e-5)}, {"subvp": 0.015, "ve": 0.04}),
    "sde": (lambda p: {"times": uniform_grid(500, 1e-3)}, {"subvp": 0.02, "ve": 0.02}),
    "heun": (lambda p: {"times": edm_grid(p, 49, 1e-3)}, {"subvp": 0.06, "ve": 0.04}),
    "dpm2m": (lambda p: {"times": log_snr_grid(p, 49, 1e-3)}, {"subvp": 0.03, "ve": 0.04}),
    "pc": (lambda p: {"times": uniform_grid(500, 1e-3)}, {"subvp": 0.11, "ve": 0.11}),
}


@pytest.mark.parametrize("sampler", list(NEW_SAMPLERS))
@pytest.mark.parametrize("name", NEW)
def test_samplers_reproduce_the_gaussian(name, sampler):
    process, data = CASES[name], gaussian_2d()
    grid, allowances = NEW_SAMPLERS[sampler]
    x_T = process.prior_sample((10_000, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x, nfe = sampling.sample(data.eps_fn(process), process, x_T, sampler, generator=torch.Generator().manual_seed(1),
                             **grid(process))
    assert x.shape == x_T.shape and nfe > 0
    assert_moments(x, data.means[0], data.covs[0], allowances[name])


# --- construction and support --------------------------------------------------------------------------------------
CONFIGS = sorted((__import__("pathlib").Path(__file__).parents[2] / "configs" / "sde").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_make_sde_builds_every_config(path):
    import yaml

    config = yaml.safe_load(path.read_text())["process"]
    process = sde.make_sde(config)
    expected = {"subvp": sde.SubVPSDE, "ve": sde.VESDE}.get(path.stem, sde.VPSDE)
    assert type(process) is expected
    if expected is sde.VPSDE:
        assert process.schedule_name == config["schedule"]


def test_make_sde_defaults_and_errors():
    assert repr(sde.make_sde({})) == repr(sde.VPSDE())
    assert sde.make_sde({"kind": "ve", "sigma_max": 80.0}).prior_std == 80.0
    with pytest.raises(ValueError, match="vp, subvp, ve"):
        sde.make_sde({"kind": "vpsde"})
    with pytest.raises(ValueError, match="t_eps"):
        sde.make_sde({"kind": "vp", "t_eps": 1e-2})
    with pytest.raises(ValueError, match="sigma_min"):
        sde.make_sde({"kind": "ve", "sigma_min": 60.0})


@pytest.mark.parametrize("name", NEW)
def test_vp_only_features_refuse_other_sdes_by_name(name):
    process = CASES[name]
    assert sde.supported_schemes(process) == ["ll_uniform", "drop_all_uniform", "drop_sigma2t_uniform"]
    for scheme in ("ll_iw", "drop_all_iw", "drop_sigma2t_iw"):
        with pytest.raises(ValueError, match=rf"{scheme}.*{type(process).__name__}"):
            sde.sample_time(process, scheme, 4)
    x_T = process.prior_sample((4, 2))
    for sampler in ("ddpm", "ddim"):
        with pytest.raises(ValueError, match=rf"{sampler}.*VP-SDE"):
            sampling.sample(gaussian_2d().eps_fn(process), process, x_T, sampler)


@pytest.mark.parametrize("name", NEW)
def test_uniform_schemes_weight_to_their_integrals(name):
    """E[weight·h(t)] = ∫ w h dt with w_ll = g²/(2σ²), w = 1 and g²/2, h(t) = cos 3t + 1.5 (quadrature)."""
    process, n, t_eps = CASES[name], 1 << 16, 1e-2
    for scheme in sde.supported_schemes(process):
        objective, _ = sde.SCHEMES[scheme]
        draw = sde.sample_time(process, scheme, n, t_eps, generator=torch.Generator().manual_seed(1),
                               dtype=torch.float64)
        values = draw.weight * (torch.cos(3 * draw.t) + 1.5)

        def integrand(s, objective=objective):
            return (sde.objective_weight(process, objective, t64(s)) * (math.cos(3 * s) + 1.5)).item()

        exact = scipy.integrate.quad(integrand, t_eps, 1.0, limit=500, epsrel=1e-10, points=[0.02, 0.1, 0.5])[0]
        assert abs(values.mean().item() - exact) <= 4 * values.std().item() / math.sqrt(n), scheme
