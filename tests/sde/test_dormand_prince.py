"""sde.dormand_prince (the ODE method rk45) against a closed form and against scipy's RK45, call by call."""

import math

import pytest
import scipy.integrate
import torch

from sde import dormand_prince, solvers

RATES = torch.linspace(-2.0, 1.0, 12, dtype=torch.float64)


def oscillating_linear(t: float, y: torch.Tensor) -> torch.Tensor:
    """dy/dt = cos(3t) λ ⊙ y: y(t) = exp(λ (sin 3t − sin 3t_0)/3) y(t_0)."""
    return math.cos(3 * t) * RATES * y


def exact(y0: torch.Tensor, t0: float, t1: float) -> torch.Tensor:
    return torch.exp(RATES * (math.sin(3 * t1) - math.sin(3 * t0)) / 3) * y0


def recorded(func, times: list):
    def call(t, y):
        times.append(float(t))
        return func(float(t), y)

    return call


@pytest.mark.parametrize("t0, t1", [(1.0, 1e-3), (0.0, 2.0)])
def test_solution_within_its_tolerance_and_cost_grows_as_order_five(t0, t1):
    y0 = torch.linspace(-1.0, 2.0, 12, dtype=torch.float64)
    calls = {}
    for tolerance in (1e-5, 1e-8):
        times = []
        y = dormand_prince.integrate(recorded(oscillating_linear, times), y0, t0, t1, tolerance, tolerance)
        assert float((y - exact(y0, t0, t1)).abs().max()) <= 10 * tolerance * (1 + float(y.abs().max()))
        calls[tolerance] = len(times)
    # the error of an order-5 step falls as h⁵: 1000× the accuracy takes about 1000^(1/5) ≈ 4× the steps
    # (fewer at these short runs, the first probe and step being fixed costs); a 2nd-order method would take 30×
    assert 2 <= calls[1e-8] / calls[1e-5] <= 6


@pytest.mark.parametrize("jump", [0.0, 30.0])
def test_scipy_rk45_calls_the_same_times(jump):
    """A nonlinear ODE on float64, smooth or with a jump of its field at t = 1.3 (which the step control meets with
    rejected steps): every call of scipy's RK45 (the first probe and the rejected steps included) at the same t, and
    the same y(t_1) up to rounding."""

    def nonlinear(t, y):
        return torch.sin(y) * 4 - y * math.cos(t) + (jump if t > 1.3 else 0.0)

    y0 = torch.linspace(-2.0, 2.0, 9, dtype=torch.float64)
    ours, theirs = [], []
    y = dormand_prince.integrate(recorded(nonlinear, ours), y0, 0.0, 3.0, 1e-4, 1e-6)
    solution = scipy.integrate.solve_ivp(lambda t, y: recorded(nonlinear, theirs)(t, torch.from_numpy(y)).numpy(),
                                         (0.0, 3.0), y0.numpy(), method="RK45", rtol=1e-4, atol=1e-6)
    assert len(ours) == len(theirs) == solution.nfev > 50
    # a rejected step calls its stages again from the same t: with the jump, the calls' times go back
    assert (sum(later < earlier for earlier, later in zip(ours, ours[1:])) > 3) == (jump > 0)
    # the sums run in another order, and each step's h is set from the last one's error: roundings (~1e-16) carried
    # through the step control, still ~1e-12 after 60 steps; a different rule would move t by 1e-3 or more
    assert max(abs(a - b) for a, b in zip(ours, theirs)) <= 1e-9
    # a jump turns the calls' time differences δt into differences jump · δt of the state
    assert float((y - torch.from_numpy(solution.y[:, -1])).abs().max()) <= 1e-12 + jump * 1e-9


@pytest.mark.parametrize("t0, t1", [(1.0, 0.25), (0.25, 1.0)])
def test_never_calls_outside_the_interval_and_lands_on_its_end(t0, t1):
    """A nearly constant field makes the first-step heuristic's h_0 = 0.01‖y‖/‖f‖ far longer than the interval."""
    times, accepted = [], []
    y0 = torch.ones(4, dtype=torch.float64)
    dormand_prince.integrate(recorded(lambda t, y: 1e-9 * y, times), y0, t0, t1, 1e-6, 1e-6,
                             callback=lambda t, y: accepted.append(t))
    assert min(t0, t1) <= min(times) and max(times) <= max(t0, t1)
    assert accepted[-1] == t1 and times[-1] == t1


def test_a_non_finite_field_raises():
    def blows_up(t, y):
        return y * (math.inf if t < 0.5 else 1.0)

    with pytest.raises(FloatingPointError, match="non-finite"):
        dormand_prince.integrate(blows_up, torch.ones(3), 1.0, 0.0, 1e-5, 1e-5)


def test_an_empty_interval_returns_the_start():
    y0 = torch.ones(3)
    assert dormand_prince.integrate(oscillating_linear, y0, 0.5, 0.5, 1e-5, 1e-5) is y0


def test_solve_ode_packs_a_tuple_state_into_one_vector():
    """(x, ℓ) with dℓ/dt = Σx: the packed solve is the solve of the concatenated vector, and the callback sees
    the unpacked pair."""

    def pair_field(t, state):
        x, integral = state
        return oscillating_linear(float(t), x.reshape(-1)).reshape(3, 4), x.sum(1)

    x0 = torch.linspace(-1.0, 2.0, 12, dtype=torch.float64).reshape(3, 4)
    model = solvers.CountedModel(lambda x, t: x)
    seen = []
    times = torch.tensor([0.0, 1.0], dtype=torch.float64)
    x1, integral = solvers.solve_ode(pair_field, (x0, torch.zeros(3, dtype=torch.float64)), times, model, "rk45",
                                     1e-7, 1e-7, callback=lambda step: seen.append(step))

    def flat_field(t, y):
        x, integral = pair_field(t, (y[:12].reshape(3, 4), y[12:]))
        return torch.cat([x.reshape(-1), integral])

    flat = dormand_prince.integrate(flat_field, torch.cat([x0.reshape(-1), torch.zeros(3, dtype=torch.float64)]),
                                    0.0, 1.0, 1e-7, 1e-7)
    assert torch.equal(x1.reshape(-1), flat[:12]) and torch.equal(integral, flat[12:])
    assert torch.allclose(x1.reshape(-1), exact(x0.reshape(-1), 0.0, 1.0), atol=1e-5)
    assert [step["i"] for step in seen] == list(range(len(seen))) and seen[-1]["t"] == 1.0
    assert isinstance(seen[-1]["x"], tuple) and seen[-1]["x"][0].shape == (3, 4)


def test_a_flow_field_takes_each_steps_coefficients_from_one_call(monkeypatch):
    """The probability flow under rk45 computes the SDE's coefficients one t at a time only for the first call and
    the first-step probe; every stage of every step reads the step's prefetched table, and the solution is the one
    computed without the table (float64 coefficients either way, a float64 state)."""
    from sde import VPSDE
    from sde.gaussian import gaussian

    vp = VPSDE()
    data = gaussian(torch.zeros(6, dtype=torch.float64), torch.linspace(0.1, 1.0, 6, dtype=torch.float64))
    x_T = torch.randn(5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    times = torch.tensor([1.0, 1e-3], dtype=torch.float64)
    one_at_a_time = []
    original = solvers.coefficients_at
    monkeypatch.setattr(solvers, "coefficients_at", lambda sde, t: one_at_a_time.append(t) or original(sde, t))
    model = solvers.CountedModel(data.eps_fn(vp))
    with_table = solvers.solve_ode(solvers.ProbabilityFlow(model, vp), x_T, times, model, "rk45", 1e-6, 1e-6)
    assert len(one_at_a_time) == 2 and model.nfe > 50
    flow = solvers.ProbabilityFlow(solvers.CountedModel(data.eps_fn(vp)), vp)
    without = solvers.solve_ode(lambda t, x: flow(torch.tensor(t, dtype=torch.float64), x), x_T, times, model,
                                "rk45", 1e-6, 1e-6)
    assert torch.allclose(with_table, without, rtol=0, atol=1e-12)
