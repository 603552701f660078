"""Samplers against data with a known score: Gaussians (D = 2, and D = 64 as (4, 4, 4) images) and a 2-D mixture.

With the exact eps_fn every sampler must reproduce the data's moments up to sampling error (k standard errors)
plus a stated allowance for its discretisation bias, measured once with 10⁵ samples and doubled.
"""

import math

import pytest
import scipy.stats
import torch

import sde
from sde import sampling, solvers
from sde.gaussian import GaussianMixture, gaussian
from sde.grids import edm_grid, uniform_grid

VP = sde.VPSDE()
SCHEDULE = VP.discretize(1000)



def gaussian_2d():
    return gaussian([0.5, -1.0], [0.3, 0.05])


def gaussian_64d():
    dim = torch.arange(64, dtype=torch.float64)
    return gaussian(0.5 * torch.sin(dim), torch.linspace(0.05, 1.0, 64, dtype=torch.float64))


def mixture_2d():
    means = [[-1.0, 0.5], [1.2, -0.3], [0.0, 1.5]]
    covs = [[[0.2, 0.05], [0.05, 0.1]], [[0.1, 0.0], [0.0, 0.3]], [[0.05, -0.02], [-0.02, 0.08]]]
    return GaussianMixture(means, covs, [0.5, 0.3, 0.2])


def mixture_moments(mix):
    mean = (mix.weights[:, None] * mix.means).sum(0)
    second = (mix.weights[:, None, None] * (mix.covs + mix.means[:, :, None] * mix.means[:, None, :])).sum(0)
    return mean, second - mean[:, None] * mean[None]


def responsibilities(mix, x):
    """p(k | x) under the data mixture; E_{x~data}[p(k | x)] = π_k exactly."""
    log_joint = torch.stack([math.log(w) + gaussian(mu, cov).log_prob(x.double())
                             for w, mu, cov in zip(mix.weights.tolist(), mix.means, mix.covs)], 1)
    return torch.softmax(log_joint, 1)


def assert_moments(x, mean, cov, allowance, k=4.0):
    """Sample mean and covariance within k standard errors plus `allowance` (a fraction of σ_i for the mean,
    of σ_iσ_j for the covariance: the sampler's discretisation bias)."""
    x = x.reshape(x.shape[0], -1).double()
    n = x.shape[0]
    var = cov.diagonal()
    std = var.sqrt()
    mean_excess = (x.mean(0) - mean).abs() - k * std / math.sqrt(n) - allowance * std
    cov_se = ((var[:, None] * var[None] + cov**2) / n).sqrt()
    cov_excess = (torch.cov(x.T) - cov).abs() - k * cov_se - allowance * std[:, None] * std[None]
    assert mean_excess.max() <= 0, f"mean beyond {k} SE + {allowance}σ by {mean_excess.max():.4g}"
    assert cov_excess.max() <= 0, f"covariance beyond {k} SE + {allowance}σσ by {cov_excess.max():.4g}"


# name -> (run(eps_fn, eps_fn_discrete, x_T, generator), allowance). Allowances: about twice the bias measured
# with 10⁵ samples on the 2-D data (σ² = 0.05 is the hardest coordinate): DDPM's β̃ variance −2.3%, DDIM (first
# order) at 250 steps −4.3%, Heun and DPM-Solver++(2M) at 50 steps +1.9%, PC (reverse diffusion, snr 0.16, 500
# steps) +4.5%; the ODE (tolerance 1e-5) and the SDE (Euler, 500 steps) showed none above sampling error (0.005).
SAMPLERS = {
    "ode": (lambda e, d, x, g: sampling.sample_ode(e, VP, x, uniform_grid(1, 1e-5)), 0.01),
    "sde": (lambda e, d, x, g: sampling.sample_sde(e, VP, x, uniform_grid(500, 1e-3), generator=g), 0.02),
    "ddpm": (lambda e, d, x, g: sampling.sample_ddpm(d, SCHEDULE, x, generator=g), 0.05),
    "ddim": (lambda e, d, x, g: sampling.sample_ddim(d, SCHEDULE, x, steps=250), 0.09),
    "heun": (lambda e, d, x, g: sampling.sample_heun(e, VP, x, edm_grid(VP, 49, 1e-3)), 0.04),
    "dpm2m": (lambda e, d, x, g: sampling.sample_dpm2m(e, VP, x, edm_grid(VP, 49, 1e-3)), 0.04),
    "pc": (lambda e, d, x, g: sampling.sample_pc(e, VP, x, uniform_grid(500, 1e-3), generator=g), 0.09),
}


def run(name, data, x_T, seed=1):
    fn, allowance = SAMPLERS[name]
    x, nfe = fn(data.eps_fn(VP), data.eps_fn_discrete(SCHEDULE), x_T, torch.Generator().manual_seed(seed))
    assert x.shape == x_T.shape and x.dtype == x_T.dtype
    return x, allowance


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_gaussian_2d_moments(name):
    data = gaussian_2d()
    x_T = torch.randn(10_000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x, allowance = run(name, data, x_T)
    assert_moments(x, data.means[0], data.covs[0], allowance)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_gaussian_64d_image_moments(name):
    """D = 64 as (4, 4, 4) float32 images: any shape (B, ...) and the model's dtype."""
    data = gaussian_64d()
    x_T = torch.randn(2000, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    x, allowance = run(name, data, x_T)
    assert_moments(x, data.means[0], data.covs[0], allowance, k=5.0)  # 5 SE: 2,080 moments are checked


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_mixture_weights_and_moments(name):
    data = mixture_2d()
    x_T = torch.randn(5000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x, allowance = run(name, data, x_T)
    mean, cov = mixture_moments(data)
    assert_moments(x, mean, cov, allowance)
    resp = responsibilities(data, x)
    weight_se = resp.std(0) / math.sqrt(x.shape[0])
    excess = (resp.mean(0) - data.weights).abs() - 4 * weight_se - 0.01
    assert excess.max() <= 0, f"mixture weights {resp.mean(0).tolist()} beyond 4 SE + 0.01 of {data.weights.tolist()}"


# --- accuracy against the exact probability-flow map ----------------------------------------------------------------
def exact_flow(data, x, t_from, t_to):
    """The probability-flow map of Gaussian data is affine: each eigen-coordinate keeps its standardised value,
    x_t = m_t μ + U diag(s_t/s_from) Uᵀ(x − m_from μ), s_t = √(m_t² λ + σ_t²)."""
    (m_from, s_from), (m_to, s_to) = (VP.marginal(torch.tensor(t, dtype=torch.float64)) for t in (t_from, t_to))
    lam, rot, mu = data.eigenvalues[0], data.eigenvectors[0], data.means[0]
    ratio = ((m_to**2 * lam + s_to**2) / (m_from**2 * lam + s_from**2)).sqrt()
    return m_to * mu + ((x - m_from * mu) @ rot) * ratio @ rot.T


def rotated_gaussian(dim=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    return gaussian(torch.randn(dim, generator=gen, dtype=torch.float64), a @ a.T / dim + 0.1 * torch.eye(dim))


@pytest.mark.parametrize("method", ["dopri5", "rk45"])
def test_ode_sampler_follows_the_exact_flow_map(method):
    data = rotated_gaussian()
    x_T = torch.randn(64, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x, nfe = sampling.sample_ode(data.eps_fn(VP), VP, x_T, uniform_grid(1, 1e-5), method=method, rtol=1e-7,
                                 atol=1e-7)
    assert (x - exact_flow(data, x_T, 1.0, 1e-5)).abs().max() < 1e-4
    x_rk4, nfe_rk4 = sampling.sample_ode(data.eps_fn(VP), VP, x_T, uniform_grid(200, 1e-5), method="rk4")
    assert nfe_rk4 == 800 and (x_rk4 - x).abs().max() < 1e-3


def test_ode_denoise_is_tweedie_at_t_eps():
    data = rotated_gaussian()
    x_T = torch.randn(16, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x, nfe = sampling.sample_ode(data.eps_fn(VP), VP, x_T, uniform_grid(1, 1e-2))
    x0, nfe0 = sampling.sample_ode(data.eps_fn(VP), VP, x_T, uniform_grid(1, 1e-2), denoise=True)
    mean_coeff, std = VP.marginal(torch.tensor(1e-2, dtype=torch.float64))
    eps = data.eps(x, mean_coeff, std)
    assert nfe0 == nfe + 1 and torch.allclose(x0, (x - std * eps) / mean_coeff, atol=1e-12)


@pytest.mark.parametrize("name", ["heun", "dpm2m"])
def test_few_step_solvers_converge_at_second_order(name):
    """Against the exact map to t_eps followed by Tweedie's x̂_0 there (both solvers end with that step),
    doubling the steps divides the error by about 4."""
    data = rotated_gaussian()
    x_T = torch.randn(256, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean_coeff, std = VP.marginal(torch.tensor(1e-3, dtype=torch.float64))
    x_eps = exact_flow(data, x_T, 1.0, 1e-3)
    target = (x_eps - std * data.eps(x_eps, mean_coeff, std)) / mean_coeff
    solver = getattr(sampling, f"sample_{name}")
    errors = [(solver(data.eps_fn(VP), VP, x_T, edm_grid(VP, steps - 1, 1e-3))[0] - target).abs().max()
              for steps in (40, 80, 160)]
    assert errors[2] < 3e-3
    assert errors[0] / errors[1] > 3 and errors[1] / errors[2] > 3, f"errors {errors}"


def test_edm_grid_follows_the_rho_spacing():
    times = edm_grid(VP, 9, t_eps=1e-3, rho=7.0)
    mean_coeff, std = VP.marginal(times)
    root = (std / mean_coeff) ** (1 / 7)
    assert times[0] == 1.0 and times[-1] == 1e-3
    assert torch.allclose(root.diff(), root.diff()[0].expand(9), rtol=1e-8)


# --- DDPM and DDIM -------------------------------------------------------------------------------------------
def test_ddim_eta_one_over_all_steps_is_ddpm():
    """DDIM's σ at η = 1 is β̃_t and its mean is μ̃_t: given the same noise the two samplers coincide."""
    data = mixture_2d()
    schedule = VP.discretize(100)
    eps_fn = data.eps_fn_discrete(schedule)
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ddpm, _ = sampling.sample_ddpm(eps_fn, schedule, x_T, generator=torch.Generator().manual_seed(5))
    ddim, nfe = sampling.sample_ddim(eps_fn, schedule, x_T, steps=100, eta=1.0,
                                     generator=torch.Generator().manual_seed(5))
    assert nfe == 100 and torch.allclose(ddim, ddpm, atol=1e-9)


def test_ddim_all_steps_and_ddpm_agree_in_distribution():
    data = mixture_2d()
    eps_fn = data.eps_fn_discrete(SCHEDULE)
    gen = torch.Generator().manual_seed(0)
    ddim, nfe = sampling.sample_ddim(eps_fn, SCHEDULE, torch.randn(4000, 2, generator=gen, dtype=torch.float64),
                                     steps=1000)
    ddpm, _ = sampling.sample_ddpm(eps_fn, SCHEDULE, torch.randn(4000, 2, generator=gen, dtype=torch.float64),
                                   generator=gen)
    assert nfe == 1000
    for axis in range(2):  # two-sample Kolmogorov–Smirnov per coordinate and on a diagonal projection
        assert scipy.stats.ks_2samp(ddim[:, axis].numpy(), ddpm[:, axis].numpy()).pvalue > 1e-3
    assert scipy.stats.ks_2samp(ddim.sum(1).numpy(), ddpm.sum(1).numpy()).pvalue > 1e-3


def test_ddim_is_deterministic_given_x_T():
    data = gaussian_2d()
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    first, nfe = sampling.sample_ddim(data.eps_fn_discrete(SCHEDULE), SCHEDULE, x_T, steps=50)
    torch.randn(10)  # the global RNG state must not matter
    second, _ = sampling.sample_ddim(data.eps_fn_discrete(SCHEDULE), SCHEDULE, x_T, steps=50,
                                     generator=torch.Generator().manual_seed(9))
    assert nfe == 50 and torch.equal(first, second)
    assert sampling.ddim_timesteps(1000, 50)[:2] == [1000, 980] and sampling.ddim_timesteps(1000, 50)[-1] == 1
    custom, nfe = sampling.sample_ddim(data.eps_fn_discrete(SCHEDULE), SCHEDULE, x_T, timesteps=[1000, 500, 100, 1])
    assert nfe == 4 and custom.shape == x_T.shape
    with pytest.raises(ValueError, match="decreasing"):
        sampling.sample_ddim(data.eps_fn_discrete(SCHEDULE), SCHEDULE, x_T, timesteps=[1, 500])
    for steps in (None, 0, 1001, 2.5):  # None reached here from `lsgm.sample sampler.options.steps=null` (fuzzing)
        with pytest.raises(ValueError, match="steps must be an integer in 1..1000"):
            sampling.ddim_timesteps(1000, steps)


@pytest.mark.parametrize("variance, clip_x0", [("small", None), ("large", None), ("small", (-0.5, 0.5))])
def test_ddpm_steps_follow_the_schedule_closed_forms(variance, clip_x0):
    """Each ancestral step is DDPMSchedule.p_mean_var's Gaussian, with noise scaled by the temperature."""
    data = gaussian_2d()
    schedule = VP.discretize(50)
    eps_fn = data.eps_fn_discrete(schedule)
    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x, nfe = sampling.sample_ddpm(eps_fn, schedule, x_T, variance=variance, temperature=0.7, clip_x0=clip_x0,
                                  generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    expected = x_T
    for t in range(50, 0, -1):
        steps = torch.full((32,), t)
        mean, var, _ = schedule.p_mean_var(eps_fn(expected, steps), expected, steps, variance, clip_x0)
        noise = torch.randn(expected.shape, generator=gen, dtype=torch.float64) if t > 1 else 0
        expected = mean + 0.7 * var.sqrt() * noise
    assert nfe == 50 and torch.allclose(x, expected, atol=1e-10)


def test_continuous_model_runs_discrete_samplers():
    """For the cosine schedule ᾱ_i = ᾱ(i/T) exactly, so eps_fn(x, i/T) is the discrete chain's exact eps."""
    cosine = sde.VPSDE("cosine")
    schedule = cosine.discretize(100)
    data = mixture_2d()
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    direct, _ = sampling.sample_ddim(data.eps_fn_discrete(schedule), schedule, x_T, steps=20)
    wrapped, _ = sampling.sample_ddim(sampling.discrete_eps_fn(data.eps_fn(cosine), 100), schedule, x_T, steps=20)
    dispatched, nfe = sampling.sample(data.eps_fn(cosine), cosine, x_T, sampler="ddim", T=100, steps=20)
    assert torch.allclose(wrapped, direct, atol=1e-9) and torch.equal(dispatched, wrapped) and nfe == 20


@pytest.mark.parametrize("name", list(sampling.SAMPLERS))
def test_dispatcher_runs_every_sampler(name):
    """Every sampler by name, at few steps, with its NFE; its samples of a 2-D Gaussian land near the Gaussian: the
    mean within 0.1, the std within a factor 3 (few-step samplers inflate or shrink a narrow Gaussian's std:
    measured 0.64 for ddim at 10 steps to 2.7 for heun at 5 points; x_T itself, N(0, I), would fail both)."""
    data = gaussian_2d()
    x_T = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    options = {"ode": {}, "sde": {"steps": 20}, "ddpm": {}, "ddim": {"steps": 10}, "heun": {"steps": 5},
               "dpm2m": {"steps": 5}, "pc": {"steps": 10}}[name]
    x, nfe = sampling.sample(data.eps_fn(VP), VP, x_T, sampler=name, T=50, generator=torch.Generator(), **options)
    expected_nfe = {"sde": 21, "ddpm": 50, "ddim": 10, "heun": 9, "dpm2m": 5, "pc": 21}.get(name, nfe)
    assert x.shape == x_T.shape and nfe == expected_nfe
    mean, std = torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([0.3, 0.05], dtype=torch.float64).sqrt()
    assert ((x.mean(0) - mean).abs() < 0.1).all(), x.mean(0)
    ratio = x.std(0) / std
    assert ((ratio > 1 / 3) & (ratio < 3)).all(), ratio


# --- reverse SDE ---------------------------------------------------------------------------------------------
def test_sde_counts_calls_and_reuses_torchsde_repeats():
    data = gaussian_2d()
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps_fn = data.eps_fn(VP)
    grid = uniform_grid(100, 1e-3)
    _, nfe = sampling.sample_sde(eps_fn, VP, x_T, grid, denoise=False, generator=torch.Generator())
    _, nfe_srk = sampling.sample_sde(eps_fn, VP, x_T, grid, method="srk", generator=torch.Generator())
    assert nfe == 100  # torchsde's shape check and the first step share one call
    assert nfe_srk == 201  # SRA1: two distinct calls per step, plus the final denoising


def test_sde_is_reproducible_and_milstein_equals_euler_for_additive_noise():
    data = gaussian_2d()
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps_fn = data.eps_fn(VP)

    def run_sde(method, seed):
        generator = torch.Generator().manual_seed(seed)
        return sampling.sample_sde(eps_fn, VP, x_T, uniform_grid(50, 1e-3), method=method, generator=generator)[0]

    euler = run_sde("euler", 1)
    assert torch.equal(euler, run_sde("euler", 1))
    assert not torch.allclose(euler, run_sde("euler", 2))
    assert torch.allclose(run_sde("milstein", 1), euler, atol=1e-12)


@pytest.mark.parametrize("method", solvers.SDE_METHODS)
def test_sde_steps_read_coefficients_computed_before_the_loop(method, monkeypatch):
    tables = []

    class Recorded(sampling.GridCoefficients):
        def __init__(self, *args):
            super().__init__(*args)
            tables.append(self)

    monkeypatch.setattr(sampling, "GridCoefficients", Recorded)
    data = gaussian_2d()
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grid = edm_grid(VP, 23, 1e-3)  # uneven steps: every stage time off the grid points must match bit for bit
    sampling.sample_sde(data.eps_fn(VP), VP, x_T, grid, method=method, generator=torch.Generator().manual_seed(0))
    (table,) = tables
    assert table.misses == 0
    assert len(table.table) == len(set(solvers.sde_stage_times(grid, method)))
    # a time off the table is computed on its own, kept and counted
    expected = VP.coefficients(torch.tensor(0.37, dtype=torch.float64))
    got = table(0.37)
    assert table.misses == 1
    assert [float(v) for v in expected] == list(got)
    table(0.37)
    assert table.misses == 1


def test_brownian_increments_have_the_right_law_and_refuse_revisits():
    bm = solvers.BrownianIncrements((20000, 2), torch.float64, torch.device("cpu"), torch.Generator().manual_seed(0),
                                     levy_area=True)
    increment, area = bm(torch.tensor(0.0, dtype=torch.float64), torch.tensor(0.04, dtype=torch.float64), return_U=True)
    space_time = area / 0.04 - 0.5 * increment  # H = U/h − W/2 ~ N(0, h/12), independent of W
    assert abs(increment.var().item() / 0.04 - 1) < 0.03 and abs(space_time.var().item() / (0.04 / 12) - 1) < 0.03
    assert abs(torch.corrcoef(torch.stack([increment.flatten(), space_time.flatten()]))[0, 1].item()) < 0.02
    assert bm(0.04, 0.05).shape == (20000, 2) and bm.levy_area_approximation == "space-time"
    with pytest.raises(RuntimeError, match="consecutive"):
        bm(0.0, 0.05)


def test_callbacks_see_each_step():
    data = gaussian_2d()
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for name, options, steps in [("ddim", {"steps": 10}, 10), ("dpm2m", {"steps": 6}, 6), ("heun", {"steps": 6}, 6),
                                 ("pc", {"steps": 7}, 7), ("sde", {"steps": 12, "denoise": False}, 12),
                                 ("ode", {"method": "euler", "steps": 9}, 9)]:
        seen = []
        sampling.sample(data.eps_fn(VP), VP, x_T, sampler=name, T=1000, callback=seen.append, **options)
        assert len(seen) == steps, name
        assert [info["i"] for info in seen] == list(range(steps)) and all(info["x"].shape == x_T.shape for info in seen)
        assert seen[0]["t"] in (1.0, 1000), name


# --- errors --------------------------------------------------------------------------------------------------
def test_unknown_names_raise_value_errors_listing_the_valid_ones():
    data = gaussian_2d()
    x_T = torch.randn(4, 2)
    eps_fn = data.eps_fn(VP)
    with pytest.raises(ValueError, match="valid: ode, sde, ddpm, ddim, heun, dpm2m, pc"):
        sampling.sample(eps_fn, VP, x_T, sampler="langevin")
    grid = uniform_grid(10, 1e-3)
    with pytest.raises(ValueError, match="rk45, dopri5.*rk4"):
        sampling.sample_ode(eps_fn, VP, x_T, grid, method="RK45")
    with pytest.raises(ValueError, match="euler, milstein, srk"):
        sampling.sample_sde(eps_fn, VP, x_T, grid, method="heun")
    with pytest.raises(ValueError, match="reverse_diffusion, euler_maruyama"):
        sampling.sample_pc(eps_fn, VP, x_T, grid, predictor="ancestral")
    with pytest.raises(ValueError, match="small, large"):
        sampling.sample_ddpm(data.eps_fn_discrete(SCHEDULE), SCHEDULE, x_T, variance="fixed")
    with pytest.raises(ValueError, match="steps"):
        sampling.sample(eps_fn, VP, x_T, "ode", method="rk4")
    with pytest.raises(ValueError, match="two ends"):
        sampling.sample_ode(eps_fn, VP, x_T, grid)
    with pytest.raises(ValueError, match="decrease"):
        sampling.sample_heun(eps_fn, VP, x_T, grid.flip(0))
    with pytest.raises(ValueError, match="either"):
        sampling.sample(eps_fn, VP, x_T, "sde", times=grid, steps=10)


def nan_below_half(eps_fn):
    def broken(x, t):
        eps = eps_fn(x, t)
        return torch.where((t < 0.5).reshape(-1, *[1] * (x.dim() - 1)), torch.nan, eps)

    return broken


@pytest.mark.parametrize("name, options", [("ode", {}), ("ode", {"method": "rk45"}),
                                           ("ode", {"method": "rk4", "steps": 20}), ("sde", {"steps": 50}),
                                           ("sde", {"steps": 50, "method": "srk"}), ("heun", {}), ("dpm2m", {}),
                                           ("pc", {"steps": 50}), ("ddpm", {}), ("ddim", {"steps": 20})])
def test_non_finite_model_output_names_the_time(name, options):
    data = gaussian_2d()
    x_T = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(sampling.NonFiniteError, match=r"at t = 0?\.?\d+;") as info:
        sampling.sample(nan_below_half(data.eps_fn(VP)), VP, x_T, sampler=name, T=1000, **options)
    assert isinstance(info.value, FloatingPointError)
    t = info.value.t if name not in sampling.DISCRETE_SAMPLERS else info.value.t / 1000
    assert 0.3 <= t < 0.5  # the first call below t = 0.5 (adaptive steps may jump past 0.4)


def test_the_ode_refuses_a_nonpositive_step_count_or_tolerance():
    data = gaussian_2d()
    x_T = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        sampling.sample(data.eps_fn(VP), VP, x_T, "ode", method="rk4", steps=0)
    with pytest.raises(ValueError, match="rtol must be a positive number, got -1"):
        sampling.sample(data.eps_fn(VP), VP, x_T, "ode", rtol=-1)
