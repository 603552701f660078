"""Solver plumbing shared by the samplers and the likelihood: the counted model, ODE solving through torchdiffeq
(or our own Dormand–Prince, `rk45`), SDE solving through torchsde on a time grid, and the Brownian increments that
drive it.

The solvers know no diffusion: an ODE is a function func(t, state), an SDE a drift(t, x) and a diffusion g(t)
(additive noise). `ProbabilityFlow`, the one vector field that both sampling and the likelihood integrate, is
built from any SDE's `coefficients`. Times are float64; a solver's clock never waits on the device.
"""

from __future__ import annotations

import itertools
import math

import torch
import torchdiffeq
import torchsde

from . import dormand_prince
from .base import Coefficients
from .grids import uniform_grid

ADAPTIVE_ODE_METHODS = ("rk45", "dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED_ODE_METHODS = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams")
SDE_METHODS = ("euler", "milstein", "srk")


class NonFiniteError(FloatingPointError):
    """A non-finite value appeared in sampling or integration; `t` is the time (or discrete step) where it first did."""

    def __init__(self, t: float, where: str = "eps_fn's output"):
        self.t = t
        super().__init__(
            f"non-finite value in {where} at t = {t:.6g}; check the model's weights and inputs, or raise t_eps "
            "if it divides by a vanishing σ_t"
        )


def check_choice(value: str, valid, what: str) -> str:
    """value, if it is one of `valid`; else ValueError listing them."""
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")
    return value


class CountedModel:
    """eps_fn with a call counter (NFE) and a watch for non-finite outputs.

    Each call queues one reduction, Σ eps (non-finite exactly when an element is: eps never nears 1e38), on
    eps's device without waiting for it; `check` reads them once and raises NonFiniteError at the time of the
    first bad call.
    """

    def __init__(self, eps_fn):
        self.eps_fn = eps_fn
        self.nfe = 0
        self._sums: list[torch.Tensor] = []
        self._times: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = self.eps_fn(x, t)
        self.nfe += 1
        self._sums.append(eps.sum(dtype=torch.float32 if eps.element_size() < 4 else None))
        self._times.append(t)
        return eps

    def check(self) -> None:
        """Raise NonFiniteError if any call so far returned a non-finite value."""
        if self._sums:
            finite = torch.isfinite(torch.stack(self._sums))
            if not bool(finite.all()):
                first = int(torch.argmin(finite.int()))
                raise NonFiniteError(float(self._times[first].reshape(-1)[0]))

    def finish(self, x: torch.Tensor, t_end: float) -> tuple[torch.Tensor, int]:
        """(x, nfe) after checking the calls and the result."""
        self.check()
        if not bool(torch.isfinite(x).all()):
            raise NonFiniteError(t_end, "the samples")
        return x, self.nfe


def batch_time(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """t as the (B,) time tensor eps_fn expects, on x's device in x's dtype."""
    if torch.is_tensor(t):
        return t.to(device=x.device, dtype=x.dtype).expand(x.shape[0])
    return torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)


def standard_normal(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """z ~ N(0, I) of x's shape, dtype and device."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def coefficients_at(sde, t: float):
    """sde.coefficients at one float t (0-d float64 tensors)."""
    return sde.coefficients(torch.tensor(t, dtype=torch.float64))


class GridCoefficients:
    """An SDE's `Coefficients` as Python floats at a solver's times t (floats): those in `times` are computed in
    one float64 call before the loop, so that a step costs a lookup where `sde.coefficients` at one t costs ~20
    small tensor operations (~80 µs on a CPU core, as much as the rest of an SDE step); any other t is computed
    when asked, kept, and counted in `misses`."""

    def __init__(self, sde, times: list[float]):
        self.sde, self.misses = sde, 0
        columns = sde.coefficients(torch.tensor(times, dtype=torch.float64))
        self.table = dict(zip(times, zip(*(column.tolist() for column in columns))))

    def __call__(self, t: float) -> Coefficients:
        row = self.table.get(t)
        if row is None:
            self.misses += 1
            row = self.table[t] = tuple(float(value) for value in coefficients_at(self.sde, t))
        return Coefficients(*row)


class FlowField:
    """The base of the vector fields `solve_ode` integrates: an SDE's coefficients at the solver's t. torchdiffeq
    passes t as a tensor (on the state's device): they are computed from it. rk45 passes a float, and before each
    step calls `prefetch` with that step's stage times: the coefficients there come from one float64 call
    (`GridCoefficients`), where one t costs ~20 small tensor operations."""

    def __init__(self, sde):
        self.sde = sde
        self.table = GridCoefficients(sde, [])

    def prefetch(self, times: list[float]) -> None:
        self.table = GridCoefficients(self.sde, times)

    def coefficients(self, t: torch.Tensor | float):
        return self.sde.coefficients(t) if torch.is_tensor(t) else self.table(t)


class ProbabilityFlow(FlowField):
    """The probability-flow ODE dx/dt = f(t)x + ½g²(t) ε(x, t)/σ_t of an `SDE` (`Coefficients.flow_drift`),
    as a solver's func(t, x) with the model counted."""

    def __init__(self, model: CountedModel, sde):
        super().__init__(sde)
        self.model = model

    def __call__(self, t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        return self.coefficients(t).flow_drift(x, self.model(x, batch_time(t, x)))


# --- ODEs (torchdiffeq, and rk45) -------------------------------------------------------------------------------------
def ode_grid(method: str, steps: int | None, t_eps: float, T: float = 1.0) -> torch.Tensor:
    """The grid an ODE method takes from T to t_eps: the two ends for an adaptive method (steps None), `steps`
    equal steps (`uniform_grid`) for a fixed-step one."""
    check_choice(method, ADAPTIVE_ODE_METHODS + FIXED_ODE_METHODS, "ODE method")
    if (method in ADAPTIVE_ODE_METHODS) == (steps is not None):
        raise ValueError(f"give `steps` for the fixed-step methods {FIXED_ODE_METHODS} and only for them")
    if steps is None:
        return uniform_grid(1, t_eps, T)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return uniform_grid(steps, t_eps, T)


def solve_ode(func, state, times: torch.Tensor, model: CountedModel, method: str = "dopri5", rtol: float = 1e-5,
              atol: float = 1e-5, callback=None):
    """The state at times[-1] of dy/dt = func(t, y) from y(times[0]) = state, through `torchdiffeq.odeint`, or,
    for `rk45`, `dormand_prince.integrate` (scipy's RK45 rules; a tuple state is packed into one vector, and its
    error norm is then the RMS over all of its elements, as scipy's on a concatenated state).

    `times` is a monotone float64 grid (either direction). A fixed-step method steps through every point of it;
    an adaptive one (rtol, atol) takes its own steps between the two ends it must then be (`ode_grid`). The model
    never sees a time outside the grid's span: adaptive methods are made to land exactly on the end (`step_t`;
    dopri5 would otherwise take its last step past it), and t is clamped for the probe of torchdiffeq's initial
    step-size heuristic, which may lie far outside (at t_0 + 0.01‖y‖/‖f‖). A solver failure caused by a
    non-finite model output is reported as NonFiniteError. `callback({"i", "t", "x"})` follows each accepted step.
    """
    check_choice(method, ADAPTIVE_ODE_METHODS + FIXED_ODE_METHODS, "ODE method")
    adaptive = method in ADAPTIVE_ODE_METHODS
    for name, tolerance in (("rtol", rtol), ("atol", atol)):
        if adaptive and not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance > 0):
            raise ValueError(f"{name} must be a positive number, got {tolerance!r}")
    if adaptive and len(times) != 2:
        raise ValueError(f"the adaptive method {method} takes a grid of its two ends only, got {len(times)} times")
    solve = _solve_rk45 if method == "rk45" else _solve_torchdiffeq
    try:
        return solve(func, state, times, method, rtol, atol, callback)
    except Exception:
        model.check()  # a non-finite model output explains the failure: raise that instead
        raise


def _step_counter(callback):
    """callback({"i", "t", "x"}) with i counting the calls."""
    counter = itertools.count()
    return lambda t, x: callback({"i": next(counter), "t": float(t), "x": x})


def _solve_torchdiffeq(func, state, times: torch.Tensor, method: str, rtol: float, atol: float, callback):
    """`solve_ode` by `torchdiffeq.odeint` (its docstring: step_t, the clamp, the grid constructor)."""
    t_start, t_end = float(times[0]), float(times[-1])
    adaptive = method in ADAPTIVE_ODE_METHODS
    if adaptive:
        options = {"step_t": torch.tensor([t_end], dtype=torch.float64)}
    else:
        options = {"grid_constructor": lambda f, y, t: times.to(t)}
    low, high = min(t_start, t_end), max(t_start, t_end)

    def clamped(t, y):
        return func(t.clamp(low, high), y)

    if callback is not None:
        step = _step_counter(callback)
        setattr(clamped, "callback_accept_step" if adaptive else "callback_step", lambda t, y, dt: step(t, y))
    device = (state[0] if isinstance(state, tuple) else state).device
    ends = torch.tensor([t_start, t_end], dtype=torch.float64, device=device)
    solution = torchdiffeq.odeint(clamped, state, ends, rtol=rtol, atol=atol, method=method, options=options)
    return tuple(s[-1] for s in solution) if isinstance(solution, tuple) else solution[-1]


def _solve_rk45(func, state, times: torch.Tensor, method: str, rtol: float, atol: float, callback):
    """`solve_ode` by `dormand_prince.integrate`: the state (a tensor or a tuple of them, one dtype) packed into one
    flat vector, func called with t as a float on the unpacked views, and told each step's times first if it has
    `prefetch` (a `FlowField`)."""
    parts = state if isinstance(state, tuple) else (state,)
    if len({part.dtype for part in parts}) != 1:
        raise ValueError(f"rk45 takes a state of one dtype, got {[part.dtype for part in parts]}")
    shapes, sizes = [part.shape for part in parts], [part.numel() for part in parts]

    def unpack(flat: torch.Tensor):
        if not isinstance(state, tuple):
            return flat.view(shapes[0])
        return tuple(piece.view(shape) for piece, shape in zip(flat.split(sizes), shapes))

    def flat_func(t: float, y: torch.Tensor) -> torch.Tensor:
        out = func(t, unpack(y))
        return torch.cat([piece.reshape(-1) for piece in out]) if isinstance(state, tuple) else out.reshape(-1)

    step = None if callback is None else _step_counter(callback)
    on_step = None if step is None else (lambda t, y: step(t, unpack(y)))
    flat = torch.cat([part.reshape(-1) for part in parts]) if isinstance(state, tuple) else state.reshape(-1)
    return unpack(dormand_prince.integrate(flat_func, flat, float(times[0]), float(times[-1]), rtol, atol, on_step,
                                                  getattr(func, "prefetch", None)))


# --- SDEs (torchsde) ---------------------------------------------------------------------------------------------
class StepClock:
    """The grid t_0, …, t_N as a clock u ∈ [0, N]: t(u) = t_k + (u − k)(t_{k+1} − t_k) on [k, k + 1].

    torchsde steps with one fixed dt; on this clock dt = 1 lands on every grid point exactly, whatever the
    spacing in t. `rate(u)` is dt/du on the step that starts at or contains u.
    """

    def __init__(self, times: torch.Tensor):
        self.times = times.tolist()
        self.steps = len(self.times) - 1

    def _step(self, u: float) -> int:
        return min(int(u), self.steps - 1)

    def time(self, u: float) -> float:
        k = self._step(u)
        return self.times[k] + (u - k) * (self.times[k + 1] - self.times[k])

    def rate(self, u: float) -> float:
        k = self._step(u)
        return self.times[k + 1] - self.times[k]


class BrownianIncrements(torchsde.BaseBrownian):
    """Brownian motion for fixed-step solvers, which ask for each step's interval [s_k, s_{k+1}] once, in order.

    Each query draws a fresh increment W ~ N(0, h I), h = |τ(s_{k+1}) − τ(s_k)| for a time change τ (default the
    identity: h = s_{k+1} − s_k), and, with `levy_area=True` (SRK), the space-time Lévy area H ~ N(0, h/12 I)
    independent of it, returned as U = ∫(W_s − W_{s_k}) ds = (s_{k+1} − s_k)(W/2 + H) (torchsde's convention).
    With τ linear on each interval this is W(τ(s)), the Brownian motion of the τ clock seen on the solver's.
    Distributionally this is the Brownian motion on the grid, at one `randn` per step where `BrownianInterval`
    builds a tree of seeded generators (see benchmarks/bench_samplers.py for the cost). A query that does not
    start where the last one ended raises RuntimeError: adaptive stepping revisits intervals and needs
    `BrownianInterval`.
    """

    def __init__(self, shape, dtype, device, generator: torch.Generator | None = None, levy_area: bool = False,
                 time_change=None):
        self._shape, self._dtype, self._device = tuple(shape), dtype, device
        self.generator, self.levy_area = generator, levy_area
        self.time_change = time_change or (lambda s: s)
        self._end = None

    def _normal(self, variance: float) -> torch.Tensor:
        return torch.empty(self._shape, dtype=self._dtype, device=self._device).normal_(
            0.0, math.sqrt(variance), generator=self.generator)

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        ta, tb = float(ta), float(tb)
        if self._end is not None and ta != self._end:
            raise RuntimeError(f"BrownianIncrements serves consecutive intervals only; asked for [{ta}, {tb}] after "
                               f"one ending at {self._end}")
        self._end = tb
        variance = abs(self.time_change(tb) - self.time_change(ta))
        increment = self._normal(variance)
        if not return_U:
            return increment
        return increment, (tb - ta) * (0.5 * increment + self._normal(variance / 12))

    def __repr__(self) -> str:
        return f"BrownianIncrements(shape={self._shape}, levy_area={self.levy_area})"

    @property
    def dtype(self):
        return self._dtype

    @property
    def device(self):
        return self._device

    @property
    def shape(self):
        return self._shape

    @property
    def levy_area_approximation(self):
        return "space-time" if self.levy_area else "none"


# Where torchsde's one step of each method on [u, u + 1] evaluates the drift and the diffusion (SRA1's c0 and c1)
SDE_STAGES = {"euler": (0.0,), "milstein": (0.0,), "srk": (0.0, 0.75, 1.0)}


def sde_stage_times(times: torch.Tensor, method: str) -> list[float]:
    """The times t, as Python floats, at which `solve_sde` asks for the drift and the diffusion on the grid `times`
    (each step's `SDE_STAGES`), bit for bit: a caller can compute its coefficients there before the loop."""
    check_choice(method, SDE_METHODS, "SDE method")
    clock = StepClock(times)
    return [clock.time(k + stage) for k in range(clock.steps) for stage in SDE_STAGES[method]]


class _ClockedSDE:
    """dx = drift(t, x) dt + g(t) dW(t) on the step clock u of `StepClock`, for torchsde (flattened states (B, D)):

        dx = drift(t(u), x) t'(u) du + g(t(u)) dW(t(u)),

    the Brownian motion of t being `BrownianIncrements` with the clock as time change. The noise is additive
    (g depends on t only), so torchsde's Milstein equals Euler–Maruyama and its SRK is the order-1.5 SRA1 scheme.
    torchsde evaluates the drift twice at some points (its shape check before the first step; SRA1's first stage
    in each step): the last evaluation is reused there.
    """

    noise_type = "additive"
    sde_type = "ito"

    def __init__(self, drift, diffusion, clock: StepClock, shape: torch.Size):
        self.drift, self.diffusion, self.clock, self.shape = drift, diffusion, clock, shape
        self._last = (None, None, None)  # (u, y, drift)

    def f(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        u_value = float(u)  # u lives on the CPU (solve_sde): no device sync
        last_u, last_y, last_drift = self._last
        if y is last_y and u_value == last_u:
            return last_drift
        drift = self.drift(self.clock.time(u_value), y.view(self.shape)).flatten(1) * self.clock.rate(u_value)
        self._last = (u_value, y, drift)
        return drift

    def g_prod(self, u: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.diffusion(self.clock.time(float(u))) * v


def solve_sde(drift, diffusion, x: torch.Tensor, times: torch.Tensor, method: str = "euler",
              generator: torch.Generator | None = None) -> torch.Tensor:
    """x at times[-1] of dx = drift(t, x) dt + diffusion(t) dW from x at times[0], one step of `method` (euler,
    milstein, srk) per interval of the monotone grid `times`, through `torchsde.sdeint` on the grid's step clock.

    drift(t, x) takes a Python float t and x of x's shape; diffusion(t) returns g(t) (a number or 0-d tensor).
    The Brownian motion is `BrownianIncrements` driven by `generator` (with the space-time Lévy area for srk);
    dt < 0 (reverse time) is allowed: the increments' variance is |dt|.
    """
    check_choice(method, SDE_METHODS, "SDE method")
    clock = StepClock(times)
    flat = x.reshape(x.shape[0], -1)
    bm = BrownianIncrements(flat.shape, flat.dtype, flat.device, generator, levy_area=method == "srk",
                            time_change=clock.time)
    steps = torch.tensor([0.0, clock.steps], dtype=torch.float64)  # on the CPU: the clock never waits on the device
    solution = torchsde.sdeint(_ClockedSDE(drift, diffusion, clock, x.shape), flat, steps, bm=bm, method=method, dt=1.0)
    return solution[-1].view(x.shape)
