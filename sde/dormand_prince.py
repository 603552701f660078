"""Dormand–Prince 5(4) with scipy's RK45 step control, on one contiguous state: the method `rk45` of
`solvers.solve_ode`.

One step of size h from (t, y) with k_1 = f(t, y) (first same as last: the previous step's k_7):

    k_s = f(t + c_s h, y + h Σ_{j<s} a_sj k_j),   s = 2…7,   y_new = y + h Σ_j b_j k_j   (k_7 = f(t + h, y_new)),
    err = h Σ_j e_j k_j,   ‖err‖ = RMS(err / (atol + rtol · max(|y|, |y_new|))),

the step accepted when ‖err‖ < 1, and h scaled by min(10, 0.9 ‖err‖^(−1/5)) after an acceptance (at most 1
right after a rejection) or by max(0.2, 0.9 ‖err‖^(−1/5)) after a rejection (Hairer, Nørsett & Wanner, Solving
ODEs I, II.4; e_j = b_j − b̂_j of the embedded 4th-order pair, as scipy's `RK45.E`). The first step is
Hairer's heuristic, capped by the interval: h_0 = 0.01 ‖y_0‖/‖f_0‖ (1e-6 when either is below 1e-5), one Euler
probe y_1 = y_0 + h_0 f_0 giving d_2 = ‖f(t_0 + h_0, y_1) − f_0‖/h_0, and
h = min(100 h_0, (0.01/max(‖f_0‖, d_2))^(1/5)), norms scaled by atol + rtol|y_0|. These are scipy's
`solve_ivp(method="RK45")` rules, which score_sde and LSGM sample and evaluate with, so at one tolerance both take
the same steps (up to float32 rounding of the state).

torchdiffeq's `dopri5` is the same tableau with Shampine's error estimate (2/3 of this one) and its own
first-step rule. The point of this module is the per-call cost: the stages are rows of one (7, N) tensor, each
stage input is one `addmv` and the error one `mv`, where torchdiffeq stacks the stages along a trailing axis and
fits a dense output at every step (see benchmarks/peers.py). f is never evaluated outside [t_0, t_1]: the first
probe is capped by the interval and the last step lands on t_1 exactly.
"""

from __future__ import annotations

import math

import torch

C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
E = (-71 / 57600, 0.0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40)
SAFETY, MIN_FACTOR, MAX_FACTOR = 0.9, 0.2, 10.0
ERROR_EXPONENT = -1 / 5


def rms(x: torch.Tensor) -> float:
    """‖x‖ = √(mean x²), as a Python float (one host sync)."""
    return float(torch.linalg.vector_norm(x)) / math.sqrt(x.numel())


def initial_step(func, t0: float, y0: torch.Tensor, f0: torch.Tensor, t1: float, rtol: float, atol: float) -> float:
    """|h| of the first step (module docstring), one call of func; never past t1."""
    interval = abs(t1 - t0)
    direction = math.copysign(1.0, t1 - t0)
    scale = y0.abs().mul_(rtol).add_(atol)
    d0, d1 = rms(y0 / scale), rms(f0 / scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, interval)
    f1 = func(t0 + direction * h0, torch.add(y0, f0, alpha=direction * h0))
    d2 = rms((f1 - f0).div_(scale)) / h0
    if d1 <= 1e-15 and d2 <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1 / 5)
    return min(100 * h0, h1, interval)


def integrate(func, y0: torch.Tensor, t0: float, t1: float, rtol: float, atol: float, callback=None,
              prefetch=None) -> torch.Tensor:
    """y(t1) of dy/dt = func(t, y) from y(t0) = y0, y0 a flat (N,) tensor and func(t: float, y (N,)) -> (N,).

    `prefetch(times)` is told the stage times t + c_2 h, …, t + c_5 h and t + h of each step before its calls (a
    field can compute what depends on t alone in one go); `callback(t, y)` follows each accepted step. Raises
    FloatingPointError on a non-finite error estimate and RuntimeError when the step falls below ten float64
    spacings of t (scipy's "required step size is less than spacing between numbers").
    """
    if t0 == t1:
        return y0
    direction = math.copysign(1.0, t1 - t0)
    stages = y0.new_empty(7, y0.numel())
    a_rows = [y0.new_tensor(row) for row in A]
    b_row, e_row = y0.new_tensor(B), y0.new_tensor(E)
    t, y = t0, y0
    stages[0] = func(t, y)
    h_abs = initial_step(func, t, y, stages[0], t1, rtol, atol)
    while direction * (t1 - t) > 0:
        min_step = 10 * abs(math.nextafter(t, direction * math.inf) - t)
        h_abs = max(h_abs, min_step)
        rejected = False
        while True:
            if h_abs < min_step:
                raise RuntimeError(f"rk45: the step fell below {min_step:.3g} at t = {t:.6g}")
            t_new = t + h_abs * direction
            if direction * (t_new - t1) > 0:
                t_new = t1
            h = t_new - t
            h_abs = abs(h)
            # c_6 = c_7 = 1: both at t_new itself, which t + (t_new − t) can miss by one rounding
            times = [t + C[s] * h for s in range(1, 5)] + [t_new]
            if prefetch is not None:
                prefetch(times)
            for s in range(1, 6):
                stages[s] = func(times[s - 1], torch.addmv(y, stages[:s].T, a_rows[s], alpha=h))
            y_new = torch.addmv(y, stages[:6].T, b_row, alpha=h)
            stages[6] = func(t_new, y_new)
            scale = torch.maximum(y.abs(), y_new.abs()).mul_(rtol).add_(atol)
            error = rms(torch.mv(stages.T, e_row).mul_(h).div_(scale))
            if not math.isfinite(error):
                raise FloatingPointError(f"rk45: non-finite error estimate at t = {t:.6g}")
            if error < 1:
                factor = MAX_FACTOR if error == 0 else min(MAX_FACTOR, SAFETY * error ** ERROR_EXPONENT)
                h_abs *= min(1.0, factor) if rejected else factor
                break
            h_abs *= max(MIN_FACTOR, SAFETY * error ** ERROR_EXPONENT)
            rejected = True
        t, y = t_new, y_new
        stages[0] = stages[6]
        if callback is not None:
            callback(t, y)
    return y
