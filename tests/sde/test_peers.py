"""Our samplers give the peers' output (k-diffusion, diffusers, scipy) on the same grid from the same x_T, with the
exact ε of Gaussian data (`sde.gaussian`), through the pairings of benchmarks/peers.py. A peer that is not installed
skips its test.

Tolerances come from the arithmetic: two implementations of one method evaluate the same formulas in a different
order, so each of the N steps adds a few roundings (here counted as OPS = 16 per step, more than any step does) of
relative size u (float64 2⁻⁵³ ≈ 1.1e-16, float32 2⁻²⁴ ≈ 6.0e-8) to values no larger than the largest |state|;
on a Gaussian the flow contracts such errors instead of growing them, so |Δ| ≤ OPS·N·u·max|state|. That bound is
far below what any difference of method would give (a first-order step instead of a second-order one, a shifted
grid point or a wrong final step change the output by 1e-3 or more).
"""

import pytest
import torch

import sde
from sde import sampling
from sde.gaussian import gaussian

from ..conftest import benchmark_module

VP = sde.VPSDE()
OPS = 16
U64, U32 = 2.0**-53, 2.0**-24


@pytest.fixture(scope="module")
def peers():
    with benchmark_module("peers") as module:
        yield module


@pytest.fixture(scope="module")
def data():
    dim = torch.arange(16, dtype=torch.float64)
    return gaussian(0.5 * torch.sin(dim), torch.linspace(0.05, 1.0, 16, dtype=torch.float64))


def x_T(dtype=torch.float64):
    return torch.randn(64, 16, generator=torch.Generator().manual_seed(0), dtype=dtype)


def exact_flow(data, x, t):
    """The probability-flow ODE's exact map from T to t for N(μ, diag λ) data: per coordinate
    x_t = m_t μ + √((m_t²λ + σ_t²)/(m_T²λ + σ_T²)) (x_T − m_T μ)."""
    (m_T, s_T), (m_t, s_t) = VP.marginal(torch.tensor(1.0, dtype=torch.float64)), VP.marginal(torch.tensor(t))
    mean, var = data.means[0], data.covs[0].diagonal()
    return m_t * mean + ((m_t**2 * var + s_t**2) / (m_T**2 * var + s_T**2)).sqrt() * (x - m_T * mean)


@pytest.mark.parametrize("name", ["heun", "dpm2m"])
def test_heun_and_dpm2m_are_k_diffusions_through_the_sigma_map(peers, data, name):
    kd = peers.k_diffusion_sampling()
    if kd is None:
        pytest.skip("k-diffusion is not installed")
    times = sampling.default_grid(name, VP)
    ours, theirs = peers.karras_pair(kd, name, VP, x_T(), times)
    (x_ours, nfe_ours), (x_theirs, nfe_theirs) = ours(data.eps_fn(VP)), theirs(data.eps_fn(VP))
    assert nfe_ours == nfe_theirs == (2 * len(times) - 1 if name == "heun" else len(times))
    # both step x̃ = x/m, which starts at x_T/m_T (m_T ≈ 0.0066): that is the largest |state|
    tolerance = OPS * nfe_ours * U64 * float(x_T().abs().max()) / float(VP.marginal(1.0)[0])
    assert float((x_ours - x_theirs).abs().max()) <= tolerance


def test_ddim_is_diffusers_ddim_scheduler(peers, data):
    ds = peers.diffusers_schedulers()
    if ds is None:
        pytest.skip("diffusers is not installed")
    ours, theirs, timesteps = peers.ddim_pair(ds, VP, x_T(), steps=20)
    (x_ours, nfe_ours), (x_theirs, nfe_theirs) = ours(data.eps_fn(VP)), theirs(data.eps_fn(VP))
    assert nfe_ours == nfe_theirs == 20 and timesteps[0] == peers.T and timesteps[-1] == peers.T // 20
    # with the float64 ᾱ table diffusers' DDIM step runs in float64 on states of size ≤ max|x_T|
    assert float((x_ours - x_theirs).abs().max()) <= OPS * 20 * U64 * float(x_T().abs().max())


def test_dpm2m_is_diffusers_multistep_dpm_solver_pp(peers, data):
    ds = peers.diffusers_schedulers()
    if ds is None:
        pytest.skip("diffusers is not installed")
    ours, theirs, grid = peers.dpm_pair(ds, VP, x_T(), sampling.default_grid("dpm2m", VP, steps=10))
    (x_ours, nfe_ours), (x_theirs, nfe_theirs) = ours(data.eps_fn(VP)), theirs(data.eps_fn(VP))
    assert nfe_ours == nfe_theirs == len(grid) == 10
    # diffusers' step casts the state and its σ table to float32, whatever the input: float32's u, on the VP
    # state x (≤ max|x_T|, the data's scale being smaller)
    assert float((x_ours - x_theirs).abs().max()) <= OPS * 10 * U32 * float(x_T().abs().max())


def test_rk45_is_scipy_rk45_step_for_step(peers, data):
    """rk45 runs scipy's RK45 rules: on a float64 state, the same network calls and the same output to the
    rounding of N steps (here scipy's numpy float64 state against ours)."""
    start = x_T()
    ours, theirs = peers.ode_pair(VP, start, "rk45", t_end=1e-3, rtol=1e-6, atol=1e-6)
    (x_ours, nfe_ours), (x_theirs, nfe_theirs) = ours(data.eps_fn(VP)), theirs(data.eps_fn(VP))
    assert nfe_ours == nfe_theirs
    assert float((x_ours - x_theirs).abs().max()) <= OPS * nfe_ours * U64 * float(start.abs().max())


def test_ode_and_scipy_rk45_both_solve_the_flow_to_their_tolerance(peers, data):
    """dopri5 and RK45 are one Runge–Kutta pair with different error estimates (benchmarks/peers.py's note), so their
    steps differ: each must land within a few tolerances of the exact flow, and so near each other."""
    t_end, tolerance = 1e-3, 1e-6
    start = x_T()
    ours, theirs = peers.ode_pair(VP, start, "dopri5", t_end=t_end, rtol=tolerance, atol=tolerance)
    (x_ours, nfe_ours), (x_theirs, nfe_theirs) = ours(data.eps_fn(VP)), theirs(data.eps_fn(VP))
    exact = exact_flow(data, start, t_end)
    scale = 1 + float(exact.abs().max())
    for x in (x_ours, x_theirs):
        assert float((x - exact).abs().max()) <= 20 * tolerance * scale
    assert 0.5 <= nfe_ours / nfe_theirs <= 2
