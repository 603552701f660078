"""Samplers for the VP-SDE and its DDPM discretisation (k-diffusion's `sampling.py` is the model).

One small stateless function per method, one signature:

    sample_<method>(eps_fn, process, x_T, *, <method options>, callback=None, generator=None) -> (samples, nfe)

`process` is a `VPSDE` for the continuous samplers, whose model is eps_fn(x, t) with t ∈ [t_eps, 1] of
shape (B,), and a `DDPMSchedule` for the discrete ones, whose model is eps_fn(x, i) with integer steps
i ∈ 1..T of shape (B,) (`discrete_eps_fn` runs a continuous model as a discrete one). The starting noise x_T
is explicit; `generator` drives any further noise; x has any shape (B, ...). `nfe` counts the calls of
eps_fn. `callback`, if given, is called once per step with a dict {"i", "t", "x"} (+ "x0_pred" where the
sampler has it at no cost). Notation: x_t = m_t x_0 + σ_t ε (`mean_coeff`, `std`), score = −ε/σ_t.

Errors: an unknown method or option value raises ValueError listing the valid ones; a non-finite output of
eps_fn raises `NonFiniteError` (a FloatingPointError) naming the time t (or step) of the first bad call.

Cost: fixed time grids and their coefficients are computed once, in float64, before the loop, so that a step
multiplies by Python floats; the finiteness watch is queued on the device and read once at the end; no loop
waits on the device (the adaptive ODE solver's own step control aside).
"""

from __future__ import annotations

import itertools
import math

import torch
import torchdiffeq
import torchsde

from .ddpm import VARIANCES, DDPMSchedule
from .vp import VPSDE

ADAPTIVE_ODE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED_ODE_METHODS = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams")
SDE_METHODS = ("euler", "milstein", "srk")
PREDICTORS = ("reverse_diffusion", "euler_maruyama")


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


def beta_and_std(sde: VPSDE, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """β(t) and σ_t in float64 at a solver's time t (a 0-d tensor inside [t_eps, 1], hence not re-validated)."""
    t64 = t.double()
    return sde.schedule.beta(t64), sde._var64(t64).sqrt()


def batch_time(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """t as the (B,) time tensor eps_fn expects, on x's device in x's dtype."""
    if torch.is_tensor(t):
        return t.to(x.dtype).expand(x.shape[0])
    return torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)


def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def _tweedie(sde: VPSDE, x: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
    """Tweedie's denoised estimate x̂_0 = E[x_0 | x_t] = (x − σ_t ε)/m_t."""
    mean_coeff, std = sde.marginal(torch.as_tensor(t, dtype=torch.float64))
    return (x - std * eps) / mean_coeff


def _denoise(model: CountedModel, sde: VPSDE, x: torch.Tensor, t: float) -> torch.Tensor:
    """One-step denoising at the final time t: x̂_0 of ε(x, t) (one more call)."""
    return _tweedie(sde, x, model(x, batch_time(t, x)), t)


# --- probability-flow ODE (torchdiffeq) ---------------------------------------------------------------------
class FlowDrift:
    """The probability-flow ODE dx/dt = f(x, t) − ½g²(t)∇log p_t(x) = −½β(t)(x − ε(x, t)/σ_t)."""

    def __init__(self, model: CountedModel, sde: VPSDE):
        self.model, self.sde = model, sde

    def __call__(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        beta, std = beta_and_std(self.sde, t)
        eps = self.model(x, batch_time(t, x))
        return -0.5 * beta * (x - eps / std)


def solve_ode(func, state, t_start: float, t_end: float, model: CountedModel, method: str = "dopri5",
              rtol: float = 1e-5, atol: float = 1e-5, steps: int | None = None, callback=None):
    """The state at t_end of dy/dt = func(t, y) from y(t_start) = state, through `torchdiffeq.odeint`.

    The model never sees a time outside [t_start, t_end]: adaptive methods (rtol, atol) are made to land
    exactly on t_end (`step_t`; dopri5 would otherwise take its last step past it), and t is clamped for the
    probe of torchdiffeq's initial step-size heuristic, which may lie far outside (at t_0 + 0.01‖y‖/‖f‖).
    Fixed-step methods take `steps` equal steps. A solver failure caused by a non-finite model output is
    reported as NonFiniteError.
    """
    check_choice(method, ADAPTIVE_ODE_METHODS + FIXED_ODE_METHODS, "ODE method")
    adaptive = method in ADAPTIVE_ODE_METHODS
    if adaptive == (steps is not None):
        raise ValueError(f"give `steps` for the fixed-step methods {FIXED_ODE_METHODS} and only for them")
    if adaptive:
        options = {"step_t": torch.tensor([t_end], dtype=torch.float64)}
    else:
        grid = torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64)
        options = {"grid_constructor": lambda f, y, t: grid.to(t)}
    low, high = min(t_start, t_end), max(t_start, t_end)

    def clamped(t, y):
        return func(t.clamp(low, high), y)

    if callback is not None:
        counter = itertools.count()
        hook = "callback_accept_step" if adaptive else "callback_step"
        setattr(clamped, hook, lambda t, y, dt: callback({"i": next(counter), "t": float(t), "x": y}))
    device = (state[0] if isinstance(state, tuple) else state).device
    times = torch.tensor([t_start, t_end], dtype=torch.float64, device=device)
    try:
        solution = torchdiffeq.odeint(clamped, state, times, rtol=rtol, atol=atol, method=method, options=options)
    except Exception:
        model.check()  # a non-finite model output explains the failure: raise that instead
        raise
    return tuple(s[-1] for s in solution) if isinstance(solution, tuple) else solution[-1]


@torch.no_grad()
def sample_ode(eps_fn, sde: VPSDE, x_T: torch.Tensor, method: str = "dopri5", rtol: float = 1e-5,
               atol: float = 1e-5, t_eps: float = 1e-5, steps: int | None = None, denoise: bool = False,
               callback=None, generator=None):
    """Probability-flow ODE from t = 1 to t_eps (Song et al. 2021, eq. 13):

        dx/dt = −½β(t)(x − ε(x, t)/σ_t),

    with any torchdiffeq method (adaptive: rtol/atol; fixed-step: `steps`). `denoise` ends with Tweedie's
    x̂_0 = (x − σ ε)/m at t_eps (one more call). Deterministic: `generator` is unused.
    """
    model = CountedModel(eps_fn)
    x = solve_ode(FlowDrift(model, sde), x_T, 1.0, t_eps, model, method, rtol, atol, steps, callback)
    if denoise:
        x = _denoise(model, sde, x, t_eps)
    return model.finish(x, t_eps)


# --- reverse-time SDE (torchsde) ----------------------------------------------------------------------------
class ReverseSDE:
    """The reverse-time SDE in s = 1 − t (torchsde integrates forward in time) on flattened states (B, D):

        dx = [½β(t)x − β(t)ε(x, t)/σ_t] ds + √β(t) dW_s,

    i.e. dx = [f − g²∇log p_t] dt + g dW̄ with dt = −ds. The noise is additive (g depends on t only), so
    torchsde's Milstein equals Euler–Maruyama and its SRK is the order-1.5 SRA1 scheme. torchsde evaluates
    the drift twice at some points (its shape check before the first step; SRA1's first stage in each step):
    the last evaluation is reused there.
    """

    noise_type = "additive"
    sde_type = "ito"

    def __init__(self, model: CountedModel, sde: VPSDE, shape: torch.Size, callback=None):
        self.model, self.sde, self.shape, self.callback = model, sde, shape, callback
        self._last = (None, None, None)  # (s, y, drift)

    def f(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s_value = float(s)  # s lives on the CPU (sample_sde): no device sync
        last_s, last_y, last_drift = self._last
        if y is last_y and s_value == last_s:
            return last_drift
        t = 1 - s
        beta, std = beta_and_std(self.sde, t)
        x = y.view(self.shape)
        eps = self.model(x, batch_time(1 - s_value, x))
        if self.callback is not None:
            self.callback({"i": self.model.nfe - 1, "t": 1 - s_value, "x": x, "x0_pred": _tweedie(self.sde, x, eps, t)})
        drift = (beta * (0.5 * x - eps / std)).flatten(1)
        self._last = (s_value, y, drift)
        return drift

    def g_prod(self, s: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.sde.schedule.beta((1 - s).double()).sqrt() * v


class BrownianIncrements(torchsde.BaseBrownian):
    """Brownian motion for fixed-step solvers, which ask for each step's interval [s_k, s_{k+1}] once, in order.

    Each query draws a fresh increment W ~ N(0, h I), h = s_{k+1} − s_k, and, with `levy_area=True` (SRK),
    the space-time Lévy area H ~ N(0, h/12 I) independent of it, returned as U = ∫(W_s − W_{s_k}) ds = h(W/2 + H)
    (torchsde's convention). Distributionally this is the Brownian motion on the grid, at one `randn` per step
    where `BrownianInterval` builds a tree of seeded generators (see benchmarks/bench_samplers.py for the cost).
    A query that does not start where the last one ended raises RuntimeError: adaptive stepping revisits
    intervals and needs `BrownianInterval`.
    """

    def __init__(self, shape, dtype, device, generator: torch.Generator | None = None, levy_area: bool = False):
        self._shape, self._dtype, self._device = tuple(shape), dtype, device
        self.generator, self.levy_area = generator, levy_area
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
        h = tb - ta
        increment = self._normal(h)
        if not return_U:
            return increment
        return increment, h * (0.5 * increment + self._normal(h / 12))

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


@torch.no_grad()
def sample_sde(eps_fn, sde: VPSDE, x_T: torch.Tensor, method: str = "euler", steps: int = 1000,
               t_eps: float = 1e-3, denoise: bool = True, callback=None, generator=None):
    """Reverse-time SDE from t = 1 to t_eps (Song et al. 2021, eq. 6) through `torchsde.sdeint`:

        dx = [f(x, t) − g²(t)∇log p_t(x)] dt + g(t) dW̄ = −β(t)[½x − ε(x, t)/σ_t] dt + √β(t) dW̄,

    in `steps` equal steps of methods euler, milstein (= euler here, the noise being additive) or srk
    (SRA1, two calls per step). The Brownian motion is `BrownianIncrements` driven by `generator` (with the
    space-time Lévy area only for srk). `denoise` ends with Tweedie's x̂_0 at t_eps (one more call).
    """
    check_choice(method, SDE_METHODS, "SDE method")
    model = CountedModel(eps_fn)
    flat = x_T.reshape(x_T.shape[0], -1)
    span = 1.0 - t_eps
    # a hair longer than span/steps, so that float rounding never adds a sliver of an extra step at the end
    dt = span / steps * (1 + 1e-9)
    bm = BrownianIncrements(flat.shape, flat.dtype, flat.device, generator, levy_area=method == "srk")
    reverse = ReverseSDE(model, sde, x_T.shape, callback)
    times = torch.tensor([0.0, span], dtype=torch.float64)  # on the CPU: the solver's clock never waits on the device
    x = torchsde.sdeint(reverse, flat, times, bm=bm, method=method, dt=dt)[-1].view(x_T.shape)
    if denoise:
        x = _denoise(model, sde, x, t_eps)
    return model.finish(x, t_eps)


# --- discrete samplers: DDPM, DDIM ----------------------------------------------------------------------------
def _discrete_loop(model: CountedModel, x: torch.Tensor, table, callback, generator, clip_x0=None):
    """The step shared by DDPM and DDIM: with x̂_0 = (x − √(1 − ᾱ_i) ε)/√ᾱ_i (clamped to clip_x0 if given),

        x ← coef_x·x + coef_x0·x̂_0 + coef_eps·ε + std·z,

    for each row (i, √ᾱ_i, √(1 − ᾱ_i), coef_x, coef_x0, coef_eps, std) of `table`.
    """
    steps = torch.tensor([row[0] for row in table], device=x.device)
    for k, (i, sqrt_alpha_bar, std_i, coef_x, coef_x0, coef_eps, std) in enumerate(table):
        eps = model(x, steps[k].expand(x.shape[0]))
        x0 = (x - std_i * eps) / sqrt_alpha_bar
        if clip_x0 is not None:
            x0 = x0.clamp(*clip_x0)
        if callback is not None:
            callback({"i": k, "t": i, "x": x, "x0_pred": x0})
        x_next = coef_x0 * x0
        if coef_x:
            x_next.add_(x, alpha=coef_x)
        if coef_eps:
            x_next.add_(eps, alpha=coef_eps)
        if std:
            x_next.add_(_noise(x, generator), alpha=std)
        x = x_next
    return x


@torch.no_grad()
def sample_ddpm(eps_fn, schedule: DDPMSchedule, x_T: torch.Tensor, variance: str = "small",
                temperature: float = 1.0, clip_x0=None, callback=None, generator=None):
    """Ancestral sampling, DDPM Algorithm 2 (Ho et al. 2020): for i = T, …, 1

        x_{i−1} = μ̃_i(x̂_0, x_i) + σ_i z,  μ̃_i = √ᾱ_{i−1}β_i/(1 − ᾱ_i) x̂_0 + √α_i(1 − ᾱ_{i−1})/(1 − ᾱ_i) x_i,

    x̂_0 = (x_i − √(1 − ᾱ_i) ε)/√ᾱ_i (so μ̃_i = (x_i − β_i/√(1 − ᾱ_i) ε)/√α_i unless clip_x0 clamps x̂_0),
    σ²_i = β̃_i ("small") or β_i ("large"), scaled by `temperature`, and z = 0 at the last step.
    """
    check_choice(variance, VARIANCES, "variance")
    log_var = schedule.posterior_log_var if variance == "small" else schedule.large_log_var
    std = (0.5 * log_var).exp() * temperature
    std[0] = 0.0
    columns = (schedule.alpha_bars.sqrt(), (1 - schedule.alpha_bars).sqrt(), schedule.posterior_coef_xt,
               schedule.posterior_coef_x0, torch.zeros_like(std), std)
    table = [(i + 1, *row) for i, row in enumerate(zip(*(c.tolist() for c in columns)))][::-1]
    model = CountedModel(eps_fn)
    return model.finish(_discrete_loop(model, x_T, table, callback, generator, clip_x0), 0.0)


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """`steps` integer steps from T down to 1, evenly spaced (all of T..1 when steps = T)."""
    if not 1 <= steps <= T:
        raise ValueError(f"steps must lie in 1..{T}, got {steps}")
    if steps == 1:
        return [T]
    return [round(T - k * (T - 1) / (steps - 1)) for k in range(steps)]


@torch.no_grad()
def sample_ddim(eps_fn, schedule: DDPMSchedule, x_T: torch.Tensor, steps: int = 50, eta: float = 0.0,
                timesteps=None, callback=None, generator=None):
    """DDIM (Song, Meng & Ermon 2021, eq. 12) over descending steps i → j (the last j = 0, ᾱ_0 = 1):

        x_j = √ᾱ_j x̂_0 + √(1 − ᾱ_j − σ²) ε + σ z,  σ = η √((1 − ᾱ_j)/(1 − ᾱ_i)) √(1 − ᾱ_i/ᾱ_j),

    deterministic at η = 0; η = 1 over all T steps is DDPM's ancestral sampler with β̃. `timesteps` (a
    strictly decreasing list in 1..T) overrides the `steps` evenly spaced ones.
    """
    steps_list = list(timesteps) if timesteps is not None else ddim_timesteps(schedule.T, steps)
    schedule.check_steps(steps_list)
    if any(a <= b for a, b in zip(steps_list, steps_list[1:])):
        raise ValueError("timesteps must be strictly decreasing")
    alpha_bars = torch.cat([torch.ones(1, dtype=torch.float64), schedule.alpha_bars])  # ᾱ_0 = 1
    now = alpha_bars[steps_list]
    nxt = alpha_bars[steps_list[1:] + [0]]
    std = eta * ((1 - nxt) / (1 - now) * (1 - now / nxt)).clamp(min=0).sqrt()
    columns = (now.sqrt(), (1 - now).sqrt(), torch.zeros_like(now), nxt.sqrt(),
               (1 - nxt - std**2).clamp(min=0).sqrt(), std)
    table = [(i, *row) for i, row in zip(steps_list, zip(*(c.tolist() for c in columns)))]
    model = CountedModel(eps_fn)
    return model.finish(_discrete_loop(model, x_T, table, callback, generator), 0.0)


def discrete_eps_fn(eps_fn, T: int):
    """A continuous-time eps_fn(x, t) run as a discrete one: step i ↦ t = i/T."""

    def eps_fn_discrete(x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return eps_fn(x, i.to(x.dtype) / T)

    return eps_fn_discrete


# --- few-step ODE solvers: Heun (EDM), DPM-Solver++(2M) ---------------------------------------------------------
def edm_times(sde: VPSDE, steps: int, t_eps: float = 1e-3, rho: float = 7.0) -> torch.Tensor:
    """VP times 1 = t_0 > … > t_{N−1} = t_eps whose σ̃_t = σ_t/m_t follow EDM's ρ-spacing (Karras et al. 2022, eq. 5):

        σ̃_i = (σ̃_max^{1/ρ} + i/(N − 1)(σ̃_min^{1/ρ} − σ̃_max^{1/ρ}))^ρ,  σ̃_max = σ̃_1, σ̃_min = σ̃_{t_eps},

    mapped back by σ²_t = σ̃²/(σ̃² + 1 − σ²_0) and sde.inv_var. float64, shape (steps,).
    """
    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    mean_coeff, std = sde.marginal(torch.tensor([1.0, t_eps], dtype=torch.float64))
    inv_rho = (std / mean_coeff) ** (1 / rho)
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    sigma2 = (inv_rho[0] + ramp * (inv_rho[1] - inv_rho[0])) ** (2 * rho)
    times = sde.inv_var(sigma2 / (sigma2 + 1 - sde.sigma2_0))
    times[0], times[-1] = 1.0, t_eps  # exact ends
    return times


def _scaled_grid(sde: VPSDE, times: torch.Tensor, x: torch.Tensor):
    """The grid of the few-step solvers: times on x's device, and Python lists of σ̃_i = σ_i/m_i and m_i with
    a final σ̃ = 0, m = 1 appended (the step to the data)."""
    times = torch.as_tensor(times, dtype=torch.float64)
    if times.dim() != 1 or not bool((times[1:] < times[:-1]).all() and times[-1] > 0):
        raise ValueError("times must be a strictly decreasing 1-D sequence in (0, 1]")
    mean_coeff, std = sde.marginal(times)
    return times.to(device=x.device, dtype=x.dtype), (std / mean_coeff).tolist() + [0.0], mean_coeff.tolist() + [1.0]


@torch.no_grad()
def sample_heun(eps_fn, sde: VPSDE, x_T: torch.Tensor, steps: int = 18, t_eps: float = 1e-3, rho: float = 7.0,
                times=None, callback=None, generator=None):
    """Heun's 2nd-order method on the probability-flow ODE, EDM Algorithm 1 (Karras et al. 2022).

    In x̃ = x/m_t and σ̃ = σ_t/m_t the ODE reads dx̃/dσ̃ = ε(m x̃, t). A step from σ̃_i to σ̃_{i+1}:

        d_i = ε(x_i, t_i),  x̃' = x̃_i + (σ̃_{i+1} − σ̃_i) d_i,
        x̃_{i+1} = x̃_i + (σ̃_{i+1} − σ̃_i)(d_i + ε(m_{i+1}x̃', t_{i+1}))/2,

    on `edm_times` (or the given descending `times`); the last step, to σ̃ = 0, is Euler's and returns x̂_0.
    NFE = 2·steps − 1. Deterministic: `generator` is unused.
    """
    times = edm_times(sde, steps, t_eps, rho) if times is None else times
    times, sigmas, mean_coeffs = _scaled_grid(sde, times, x_T)
    model = CountedModel(eps_fn)
    x = x_T / mean_coeffs[0]
    for i in range(len(times)):
        eps = model(x * mean_coeffs[i], times[i].expand(x.shape[0]))
        if callback is not None:
            callback({"i": i, "t": float(times[i]), "x": x * mean_coeffs[i], "x0_pred": x - sigmas[i] * eps})
        step = sigmas[i + 1] - sigmas[i]
        x_euler = torch.add(x, eps, alpha=step)
        if sigmas[i + 1] == 0:
            x = x_euler
        else:
            eps_next = model(x_euler * mean_coeffs[i + 1], times[i + 1].expand(x.shape[0]))
            x = torch.add(x, eps + eps_next, alpha=0.5 * step)
    return model.finish(x, float(times[-1]))


@torch.no_grad()
def sample_dpm2m(eps_fn, sde: VPSDE, x_T: torch.Tensor, steps: int = 20, t_eps: float = 1e-3, rho: float = 7.0,
                 times=None, callback=None, generator=None):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): multistep, data prediction, in λ = log(m/σ) = −log σ̃.

    With x̃ = x/m, D_i = x̃_i − σ̃_i ε(x_i, t_i) (= x̂_0), h_i = λ_{i+1} − λ_i and r_i = h_{i−1}/h_i:

        x̃_{i+1} = (σ̃_{i+1}/σ̃_i) x̃_i − (e^{−h_i} − 1) D'_i,  D'_i = (1 + 1/(2r_i)) D_i − 1/(2r_i) D_{i−1},

    with D'_i = D_i at the first step and at the last, to σ̃ = 0, which returns D. On `edm_times` (or the
    given descending `times`). NFE = steps. Deterministic: `generator` is unused.
    """
    times = edm_times(sde, steps, t_eps, rho) if times is None else times
    times, sigmas, mean_coeffs = _scaled_grid(sde, times, x_T)
    model = CountedModel(eps_fn)
    x = x_T / mean_coeffs[0]
    x0_prev, h_prev = None, None
    for i in range(len(times)):
        eps = model(x * mean_coeffs[i], times[i].expand(x.shape[0]))
        x0 = x - sigmas[i] * eps
        if callback is not None:
            callback({"i": i, "t": float(times[i]), "x": x * mean_coeffs[i], "x0_pred": x0})
        if sigmas[i + 1] == 0:
            x = x0
            break
        h = math.log(sigmas[i] / sigmas[i + 1])
        x0_mixed = x0 if x0_prev is None else x0 + (x0 - x0_prev) * (h / (2 * h_prev))
        x = torch.add(x * (sigmas[i + 1] / sigmas[i]), x0_mixed, alpha=-math.expm1(-h))
        x0_prev, h_prev = x0, h
    return model.finish(x, float(times[-1]))


# --- predictor–corrector (score_sde) ------------------------------------------------------------------------------
def _predictor_coefficients(sde: VPSDE, times: torch.Tensor, predictor: str):
    """Per step i (t_i → t_{i+1}) the predictor x ← a x − b ε + c z, in terms of the discrete chain's
    β_i = 1 − ᾱ(t_i)/ᾱ(t_{i+1}) (in (0, 1) however few the steps; ≈ β(t_i)Δ_i, Δ_i = t_i − t_{i+1}):

        reverse_diffusion  (2 − √(1 − β_i))x − β_i ε/σ + √β_i z (score_sde's ReverseDiffusionPredictor):
                           a = 2 − √(1 − β_i), b = β_i/σ, c = √β_i
        euler_maruyama     x + βΔ(½x − ε/σ) + √(βΔ) z with β = β(t_i):  a = 1 + ½βΔ, b = βΔ/σ, c = √(βΔ)

    Also returns the corrector's α_i = 1 − β_i and σ_{t_i}. Lists of Python floats.
    """
    check_choice(predictor, PREDICTORS, "predictor")
    integral = sde.integral(times)
    beta_discrete = -torch.expm1(integral[1:] - integral[:-1])
    std = sde.marginal(times[:-1])[1]
    if predictor == "reverse_diffusion":
        a, beta = 2 - (1 - beta_discrete).sqrt(), beta_discrete
    else:
        beta = sde.beta(times[:-1]) * (times[:-1] - times[1:])
        a = 1 + 0.5 * beta
    return [c.tolist() for c in (a, beta / std, beta.sqrt(), 1 - beta_discrete, std)]


@torch.no_grad()
def sample_pc(eps_fn, sde: VPSDE, x_T: torch.Tensor, steps: int = 1000, t_eps: float = 1e-3,
              predictor: str = "reverse_diffusion", snr: float = 0.16, n_corrector: int = 1, denoise: bool = True,
              callback=None, generator=None):
    """Predictor–corrector sampling, score_sde's PC sampler (Song et al. 2021, Algorithm 2 with VP-SDE).

    On t_i = linspace(1, t_eps, steps + 1), at each t_i: `n_corrector` Langevin steps

        x ← x + δ s + √(2δ) z,  s = −ε/σ_t,  δ = 2α_i (snr·‖z‖/‖s‖)²  (norms averaged over the batch, as score_sde),

    then one predictor step (`_predictor_coefficients`) to t_{i+1}. `denoise` ends with Tweedie's x̂_0 at
    t_eps (one more call). NFE = steps·(n_corrector + 1) (+ 1).
    """
    times64 = torch.linspace(1.0, t_eps, steps + 1, dtype=torch.float64)
    a, b, c, alpha, std = _predictor_coefficients(sde, times64, predictor)
    times = times64.to(device=x_T.device, dtype=x_T.dtype)
    model = CountedModel(eps_fn)
    x = x_T
    for i in range(steps):
        t = times[i].expand(x.shape[0])
        for _ in range(n_corrector):
            score = model(x, t) / -std[i]
            z = _noise(x, generator)
            ratio = z.flatten(1).norm(dim=1).mean() / score.flatten(1).norm(dim=1).mean()
            delta = 2 * alpha[i] * (snr * ratio) ** 2
            x = x + delta * score + (2 * delta).sqrt() * z
        eps = model(x, t)
        if callback is not None:
            callback({"i": i, "t": float(times64[i]), "x": x})
        x = torch.add(a[i] * x, eps, alpha=-b[i]).add_(_noise(x, generator), alpha=c[i])
    if denoise:
        x = _denoise(model, sde, x, t_eps)
    return model.finish(x, t_eps)


# --- registry ------------------------------------------------------------------------------------------------------
SAMPLERS = {
    "ode": sample_ode,
    "sde": sample_sde,
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "heun": sample_heun,
    "dpm2m": sample_dpm2m,
    "pc": sample_pc,
}
DISCRETE_SAMPLERS = ("ddpm", "ddim")


def sample(eps_fn, sde: VPSDE, x_T: torch.Tensor, sampler: str = "ode", T: int = 1000, **options):
    """Run the named sampler on a continuous-time eps_fn(x, t); the discrete ones (ddpm, ddim) run on
    sde.discretize(T) with eps_fn(x, i/T). Returns (samples, nfe)."""
    check_choice(sampler, tuple(SAMPLERS), "sampler")
    if sampler in DISCRETE_SAMPLERS:
        return SAMPLERS[sampler](discrete_eps_fn(eps_fn, T), sde.discretize(T), x_T, **options)
    return SAMPLERS[sampler](eps_fn, sde, x_T, **options)
