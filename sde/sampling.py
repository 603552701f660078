"""Samplers for any `sde.base.SDE` and for its DDPM discretisation (k-diffusion's `sampling.py` is the model).

One small stateless function per method, one signature:

    continuous  sample_<method>(eps_fn, sde, x_T, times, *, <method options>, callback=None, generator=None)
    discrete    sample_<method>(eps_fn, schedule, x_T, *, <method options>, callback=None, generator=None)
                -> (samples, nfe)

A continuous sampler integrates from times[0] (= T) down to times[-1] (= t_eps) on the decreasing grid `times`
(`sde.grids`: uniform_grid, quadratic_grid, log_snr_grid, edm_grid) with a model eps_fn(x, t), t of shape (B,);
it uses only the SDE interface (`coefficients`, `marginal`). The discrete ones run on a `DDPMSchedule` (the
VP-SDE's `discretize(T)`) with eps_fn(x, i), integer steps i ∈ 1..T of shape (B,) (`discrete_eps_fn` runs a
continuous model as a discrete one). `sample` dispatches by name and builds each sampler's default grid. The
starting noise x_T is explicit (`sde.prior_sample`); `generator` drives any further noise; x has any shape
(B, ...). `nfe` counts the calls of eps_fn. `callback`, if given, is called once per step with a dict
{"i", "t", "x"} (+ "x0_pred" where the sampler has it at no cost). Notation: x_t = m_t x_0 + σ_t ε
(`mean_coeff`, `std`), score = −ε/σ_t.

Errors: an unknown method or option value raises ValueError listing the valid ones; a non-finite output of
eps_fn raises `NonFiniteError` (a FloatingPointError) naming the time t (or step) of the first bad call.

Cost: grid coefficients are computed once, in float64, before the loop, so that a step multiplies by Python
floats; the finiteness watch is queued on the device and read once at the end; no loop waits on the device
(the adaptive ODE solver's own step control aside).
"""

from __future__ import annotations

import inspect
import math

import torch

from .base import SDE
from .ddpm import VARIANCES, DDPMSchedule
from .grids import check_grid, edm_grid, uniform_grid
from .solvers import (  # noqa: F401  (BrownianIncrements, NonFiniteError: callers import them from here)
    BrownianIncrements,
    CountedModel,
    GridCoefficients,
    NonFiniteError,
    ProbabilityFlow,
    batch_time,
    check_choice,
    coefficients_at,
    ode_grid,
    sde_stage_times,
    solve_ode,
    solve_sde,
    standard_normal,
)

PREDICTORS = ("reverse_diffusion", "euler_maruyama")


def _denoise(model: CountedModel, sde: SDE, x: torch.Tensor, t: float) -> torch.Tensor:
    """One-step denoising at the final time t: Tweedie's x̂_0 = (x − σ_t ε)/m_t of ε(x, t) (one more call)."""
    return coefficients_at(sde, t).x0_from_eps(x, model(x, batch_time(t, x)))


# --- probability-flow ODE (torchdiffeq, rk45) -------------------------------------------------------------------------
@torch.no_grad()
def sample_ode(eps_fn, sde: SDE, x_T: torch.Tensor, times: torch.Tensor, method: str = "dopri5", rtol: float = 1e-5,
               atol: float = 1e-5, denoise: bool = False, callback=None, generator=None):
    """Probability-flow ODE from times[0] to times[-1] (Song et al. 2021, eq. 13):

        dx/dt = f(t)x + ½g²(t) ε(x, t)/σ_t,

    with any torchdiffeq method or `rk45` (`sde.dormand_prince`: scipy's RK45, step for step): an adaptive one
    (rtol/atol) on the grid's two ends (`solvers.ode_grid`), a fixed-step one through every point of `times`.
    `denoise` ends with Tweedie's x̂_0 = (x − σ ε)/m at times[-1] (one more call). Deterministic: `generator` is unused.
    """
    times = check_grid(times)
    model = CountedModel(eps_fn)
    x = solve_ode(ProbabilityFlow(model, sde), x_T, times, model, method, rtol, atol, callback)
    t_eps = float(times[-1])
    if denoise:
        x = _denoise(model, sde, x, t_eps)
    return model.finish(x, t_eps)


# --- reverse-time SDE (torchsde) ----------------------------------------------------------------------------
class ReverseDrift:
    """The reverse-time SDE's drift f(t)x − g²(t)∇log p_t(x) = f(t)x + g²(t)ε(x, t)/σ_t, for `solve_sde`, with
    the coefficients from `coefficients_at(t)` (`GridCoefficients`)."""

    def __init__(self, model: CountedModel, coefficients_at: GridCoefficients, callback=None):
        self.model, self.coefficients_at, self.callback = model, coefficients_at, callback

    def __call__(self, t: float, x: torch.Tensor) -> torch.Tensor:
        coefficients = self.coefficients_at(t)
        eps = self.model(x, batch_time(t, x))
        if self.callback is not None:
            self.callback({"i": self.model.nfe - 1, "t": t, "x": x, "x0_pred": coefficients.x0_from_eps(x, eps)})
        return coefficients.reverse_drift(x, eps)


@torch.no_grad()
def sample_sde(eps_fn, sde: SDE, x_T: torch.Tensor, times: torch.Tensor, method: str = "euler", denoise: bool = True,
               callback=None, generator=None):
    """Reverse-time SDE from times[0] to times[-1] (Song et al. 2021, eq. 6) through `torchsde.sdeint`:

        dx = [f(x, t) − g²(t)∇log p_t(x)] dt + g(t) dW̄ = [f(t)x + g²(t)ε(x, t)/σ_t] dt + g(t) dW̄,

    one step of euler, milstein (= euler here, the noise being additive) or srk (SRA1, two calls per step) per
    interval of `times` (`solvers.solve_sde`), the noise driven by `generator`. `denoise` ends with Tweedie's
    x̂_0 at times[-1] (one more call).
    """
    times = check_grid(times)
    model = CountedModel(eps_fn)
    coefficients_at = GridCoefficients(sde, sde_stage_times(times, method))
    diffusion = lambda t: math.sqrt(coefficients_at(t).diffusion_squared)  # noqa: E731
    x = solve_sde(ReverseDrift(model, coefficients_at, callback), diffusion, x_T, times, method, generator)
    t_eps = float(times[-1])
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
            x_next.add_(standard_normal(x, generator), alpha=std)
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
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an integer in 1..{T}, got {steps!r}")
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
def _scaled_grid(sde: SDE, times, x: torch.Tensor):
    """The grid of the few-step solvers: times on x's device, and Python lists of σ̃_i = σ_i/m_i and m_i with
    a final σ̃ = 0, m = 1 appended (the step to the data)."""
    times = check_grid(times)
    mean_coeff, std = sde.marginal(times)
    return times.to(device=x.device, dtype=x.dtype), (std / mean_coeff).tolist() + [0.0], mean_coeff.tolist() + [1.0]


@torch.no_grad()
def sample_heun(eps_fn, sde: SDE, x_T: torch.Tensor, times: torch.Tensor, callback=None, generator=None):
    """Heun's 2nd-order method on the probability-flow ODE, EDM Algorithm 1 (Karras et al. 2022).

    In x̃ = x/m_t and σ̃ = σ_t/m_t the ODE of any linear SDE reads dx̃/dσ̃ = ε(m x̃, t). A step from σ̃_i to σ̃_{i+1}:

        d_i = ε(x_i, t_i),  x̃' = x̃_i + (σ̃_{i+1} − σ̃_i) d_i,
        x̃_{i+1} = x̃_i + (σ̃_{i+1} − σ̃_i)(d_i + ε(m_{i+1}x̃', t_{i+1}))/2,

    through the N points of `times` (default `edm_grid`); a last step, to σ̃ = 0, is Euler's and returns x̂_0.
    NFE = 2N − 1. Deterministic: `generator` is unused.
    """
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
def sample_dpm2m(eps_fn, sde: SDE, x_T: torch.Tensor, times: torch.Tensor, callback=None, generator=None):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): multistep, data prediction, in λ = log(m/σ) = −log σ̃.

    With x̃ = x/m, D_i = x̃_i − σ̃_i ε(x_i, t_i) (= x̂_0), h_i = λ_{i+1} − λ_i and r_i = h_{i−1}/h_i:

        x̃_{i+1} = (σ̃_{i+1}/σ̃_i) x̃_i − (e^{−h_i} − 1) D'_i,  D'_i = (1 + 1/(2r_i)) D_i − 1/(2r_i) D_{i−1},

    with D'_i = D_i at the first step and at the last, to σ̃ = 0, which returns D. Through the N points of
    `times` (default `edm_grid`; `log_snr_grid` is DPM-Solver's own). NFE = N. Deterministic: `generator` is unused.
    """
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
def _predictor_coefficients(sde: SDE, times: torch.Tensor, predictor: str):
    """Per step i (t_i → t_{i+1}) the predictor x ← a x − b ε + c z, from the exact forward transition
    q(x_{t_i} | x_{t_{i+1}}) = N(r_i x, G²_i I), r_i = m_{t_i}/m_{t_{i+1}}, G²_i = σ²_{t_i} − r²_i σ²_{t_{i+1}}
    (VP: r_i = √(1 − β_i), G²_i = β_i with DDPM's β_i = 1 − ᾱ(t_i)/ᾱ(t_{i+1}); VE: r_i = 1, G²_i = σ²_i − σ²_{i+1}):

        reverse_diffusion  x ← (2 − r_i)x + G²_i s + G_i z  (score_sde's ReverseDiffusionPredictor), s = −ε/σ:
                           a = 2 − r_i, b = G²_i/σ_{t_i}, c = G_i
        euler_maruyama     x ← x − [f x − g² s]Δ + g√Δ z at t_i, Δ = t_i − t_{i+1}:
                           a = 1 − fΔ, b = g²Δ/σ_{t_i}, c = √(g²Δ)

    Also returns the corrector's α_i = r_i² (score_sde's α: 1 − β_i for VP and sub-VP, 1 for VE) and σ_{t_i}.
    Lists of Python floats.
    """
    check_choice(predictor, PREDICTORS, "predictor")
    mean_coeff, std = sde.marginal(times)
    ratio = mean_coeff[:-1] / mean_coeff[1:]
    if predictor == "reverse_diffusion":
        noise_var = (std[:-1] ** 2 - ratio**2 * std[1:] ** 2).clamp(min=0)
        a = 2 - ratio
    else:
        coefficients, step = sde.coefficients(times[:-1]), times[:-1] - times[1:]
        noise_var = coefficients.diffusion_squared * step
        a = 1 - coefficients.drift_coeff * step
    std = std[:-1]
    return [c.tolist() for c in (a, noise_var / std, noise_var.sqrt(), ratio**2, std)]


@torch.no_grad()
def sample_pc(eps_fn, sde: SDE, x_T: torch.Tensor, times: torch.Tensor, predictor: str = "reverse_diffusion",
              snr: float = 0.16, n_corrector: int = 1, denoise: bool = True, callback=None, generator=None):
    """Predictor–corrector sampling, score_sde's PC sampler (Song et al. 2021, Algorithm 2 and 3).

    At each t_i of `times` but the last: `n_corrector` Langevin steps

        x ← x + δ s + √(2δ) z,  s = −ε/σ_t,  δ = 2α_i (snr·‖z‖/‖s‖)²  (norms averaged over the batch, as score_sde),

    then one predictor step (`_predictor_coefficients`) to t_{i+1}. `denoise` ends with Tweedie's x̂_0 at
    times[-1] (one more call). NFE = N·(n_corrector + 1) (+ 1) for N intervals.
    """
    times64 = check_grid(times)
    a, b, c, alpha, std = _predictor_coefficients(sde, times64, predictor)
    times = times64.to(device=x_T.device, dtype=x_T.dtype)
    model = CountedModel(eps_fn)
    x = x_T
    for i in range(len(times) - 1):
        t = times[i].expand(x.shape[0])
        for _ in range(n_corrector):
            score = model(x, t) / -std[i]
            z = standard_normal(x, generator)
            ratio = z.flatten(1).norm(dim=1).mean() / score.flatten(1).norm(dim=1).mean()
            delta = 2 * alpha[i] * (snr * ratio) ** 2
            x = x + delta * score + (2 * delta).sqrt() * z
        eps = model(x, t)
        if callback is not None:
            callback({"i": i, "t": float(times64[i]), "x": x})
        x = torch.add(a[i] * x, eps, alpha=-b[i]).add_(standard_normal(x, generator), alpha=c[i])
    t_eps = float(times64[-1])
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
# each continuous sampler's default grid options; heun's and dpm2m's `steps` count the grid's points (their NFE)
DEFAULT_GRIDS = {
    "ode": {"steps": None, "t_eps": 1e-5},
    "sde": {"steps": 1000, "t_eps": 1e-3},
    "pc": {"steps": 1000, "t_eps": 1e-3},
    "heun": {"steps": 18, "t_eps": 1e-3, "rho": 7.0},
    "dpm2m": {"steps": 20, "t_eps": 1e-3, "rho": 7.0},
}


def default_grid(sampler: str, sde: SDE, method: str = "dopri5", **grid_options) -> torch.Tensor:
    """The grid `sample` gives a continuous sampler, from its DEFAULT_GRIDS options overridden by grid_options:
    ode `solvers.ode_grid` (the two ends for adaptive methods), sde and pc `uniform_grid`, heun and dpm2m
    `edm_grid` with `steps` points."""
    options = {**DEFAULT_GRIDS[sampler], **grid_options}
    steps, t_eps = options["steps"], options["t_eps"]
    if sampler == "ode":
        return ode_grid(method, steps, t_eps)
    if sampler in ("sde", "pc"):
        return uniform_grid(steps, t_eps)
    if not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps!r}")
    return edm_grid(sde, steps - 1, t_eps, options["rho"])


def sampler_options(sampler: str) -> list[str]:
    """The option names `sample` accepts for the named sampler: the grid options (`DEFAULT_GRIDS`, `times`) of
    a continuous one, then the keyword arguments of its function."""
    check_choice(sampler, tuple(SAMPLERS), "sampler")
    if sampler in DISCRETE_SAMPLERS:
        return list(inspect.signature(SAMPLERS[sampler]).parameters)[3:]  # after eps_fn, schedule, x_T
    return [*DEFAULT_GRIDS[sampler], "times"] + list(inspect.signature(SAMPLERS[sampler]).parameters)[4:]


def sample(eps_fn, sde: SDE, x_T: torch.Tensor, sampler: str = "ode", T: int = 1000, **options):
    """Run the named sampler on a continuous-time eps_fn(x, t). Continuous samplers take `times` from options,
    or `default_grid` built from the options `steps`, `t_eps` (and `rho`); the discrete ones (ddpm, ddim) run
    on sde.discretize(T) (VP only) with eps_fn(x, i/T). Returns (samples, nfe)."""
    check_choice(sampler, tuple(SAMPLERS), "sampler")
    if sampler in DISCRETE_SAMPLERS:
        discretize = getattr(sde, "discretize", None)
        if discretize is None:
            raise ValueError(f"the {sampler} sampler runs on a DDPM chain, which only the VP-SDE has; {sde!r} has "
                             f"none: use one of {', '.join(DEFAULT_GRIDS)}")
        return SAMPLERS[sampler](discrete_eps_fn(eps_fn, T), discretize(T), x_T, **options)
    grid_options = {key: options.pop(key) for key in DEFAULT_GRIDS[sampler] if key in options}
    times = options.pop("times", None)
    if times is None:
        times = default_grid(sampler, sde, options.get("method", "dopri5"), **grid_options)
    elif grid_options:
        raise ValueError(f"give either `times` or the grid options {sorted(grid_options)}, not both")
    return SAMPLERS[sampler](eps_fn, sde, x_T, times, **options)
