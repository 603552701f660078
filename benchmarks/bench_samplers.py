"""Sampler overhead on the CPU: how much wall time each sampler adds over the network calls it makes.

    python benchmarks/bench_samplers.py [--batch 32] [--hidden 64] [--repeats 3] [--threads 1]

The model is a small time-conditional conv net on (B, 4, 8, 8) latents. For each sampler the script prints
NFE, wall time and the overhead ratio wall / (NFE × t_call), with t_call the median time of one bare eps_fn
call on the same batch (after a warm-up), measured right before each run; the ratio is the median over the
runs. 1.0 is the floor; the target is ≤ 1.05. On a shared machine other processes' load blurs that ratio, so
two more views follow: the wall time over the network's own wall time summed over its calls inside the same
run, and the solver's own CPU time per call, measured with a model that costs nothing (eps = x), with the
ratio it predicts for t_call (in CPU time). A second table shows what one Brownian-motion query costs per
step: torchsde's BrownianInterval with and without `dt` (torchsde issue 109) against the BrownianIncrements
that sample_sde uses.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torchsde
from torch import nn

import sde
from sde import sampling


class TinyEpsNet(nn.Module):
    """Three 3×3 convs with SiLU; the time enters through a sinusoidal embedding added per channel."""

    def __init__(self, channels: int = 4, hidden: int = 64, embedding: int = 32):
        super().__init__()
        self.register_buffer("frequencies", torch.exp(torch.linspace(0, math.log(1000), embedding // 2)))
        self.time = nn.Linear(embedding, hidden)
        self.conv_in = nn.Conv2d(channels, hidden, 3, padding=1)
        self.conv_mid = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.conv_out = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        angles = t[:, None] * self.frequencies
        embedding = self.time(torch.cat([angles.sin(), angles.cos()], 1))[:, :, None, None]
        h = nn.functional.silu(self.conv_in(x) + embedding)
        h = nn.functional.silu(self.conv_mid(h))
        return self.conv_out(h)


def median_seconds(fn, repeats: int = 20, warmup: int = 3, clock=time.perf_counter) -> float:
    """Median time of single calls of fn on `clock` (wall by default), after a warm-up."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def free_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A model that costs nothing (eps = x): what is left of a run is the solver's own work."""
    return x


class StopwatchNet:
    """The net, with the wall time of its calls summed inside a sampler's run."""

    def __init__(self, net: nn.Module):
        self.net, self.seconds = net, 0.0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        eps = self.net(x, t)
        self.seconds += time.perf_counter() - start
        return eps


def sampler_runs(vp: sde.VPSDE, x_T: torch.Tensor):
    """name -> callable(eps_fn) returning (samples, nfe)."""
    generator = torch.Generator().manual_seed(0)
    schedule = vp.discretize(1000)

    def discrete(fn):
        return lambda eps_fn: fn(sampling.discrete_eps_fn(eps_fn, 1000))

    return {
        "ode dopri5 (tol 1e-5)": lambda e: sampling.sample(e, vp, x_T, "ode"),
        "ode rk45 (tol 1e-5)": lambda e: sampling.sample(e, vp, x_T, "ode", method="rk45"),
        "ode rk4 (50 steps)": lambda e: sampling.sample(e, vp, x_T, "ode", method="rk4", steps=50),
        "sde euler (1000 steps)": lambda e: sampling.sample(e, vp, x_T, "sde", steps=1000, generator=generator),
        "sde milstein (500 steps)": lambda e: sampling.sample(e, vp, x_T, "sde", method="milstein", steps=500,
                                                              generator=generator),
        "sde srk (250 steps)": lambda e: sampling.sample(e, vp, x_T, "sde", method="srk", steps=250,
                                                         generator=generator),
        "ddpm (T = 1000)": discrete(lambda e: sampling.sample_ddpm(e, schedule, x_T, generator=generator)),
        "ddim (50 steps)": discrete(lambda e: sampling.sample_ddim(e, schedule, x_T, steps=50)),
        "heun (18 steps)": lambda e: sampling.sample(e, vp, x_T, "heun", steps=18),
        "dpm2m (20 steps)": lambda e: sampling.sample(e, vp, x_T, "dpm2m", steps=20),
        "pc (500 steps)": lambda e: sampling.sample(e, vp, x_T, "pc", steps=500, generator=generator),
    }


def brownian_query_microseconds(bm, span: float, steps: int, levy_area: bool) -> float:
    times = torch.linspace(0, span, steps + 1, dtype=torch.float64)
    start = time.perf_counter()
    for i in range(steps):
        bm(times[i], times[i + 1], return_U=levy_area)
    return (time.perf_counter() - start) / steps * 1e6


def brownian_motions(shape, span: float, steps: int, levy_area: bool):
    """label -> a fresh Brownian motion on [0, span] of the given shape."""
    approximation = "space-time" if levy_area else "none"
    return {
        "BrownianInterval, dt given": torchsde.BrownianInterval(
            t0=0.0, t1=span, size=shape, entropy=0, levy_area_approximation=approximation, dt=span / steps),
        "BrownianInterval, no dt": torchsde.BrownianInterval(
            t0=0.0, t1=span, size=shape, entropy=0, levy_area_approximation=approximation),
        "BrownianIncrements (sample_sde)": sampling.BrownianIncrements(
            shape, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(0), levy_area=levy_area),
    }


def benchmark_setup(batch: int, hidden: int, threads: int) -> tuple[sde.VPSDE, TinyEpsNet, torch.Tensor]:
    """The sampler benchmarks' VP-SDE, network (seeded) and x_T (B, 4, 8, 8), on `threads` threads."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = TinyEpsNet(hidden=hidden).eval()
    return sde.VPSDE(), net, torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="runs per sampler (median wall time)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    vp, net, x_T = benchmark_setup(args.batch, args.hidden, args.threads)
    t_call_input = torch.full((args.batch,), 0.5)

    def bare_call():
        with torch.no_grad():
            net(x_T, t_call_input)

    print(f"batch {args.batch} × (4, 8, 8), hidden {args.hidden}, {args.threads} thread(s), torch {torch.__version__}")
    print()
    print("| sampler | NFE | wall (s) | t_call (ms) | overhead wall / (NFE · t_call) "
          "| wall / Σ network time in the run | solver CPU µs per call (free model) | 1 + that / t_call (CPU) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, run in sampler_runs(vp, x_T).items():
        nfe = run(net)[1]  # a warm-up run, which also gives the NFE
        rows = []
        for _ in range(args.repeats):  # each run paired with a fresh t_call, as the machine's load drifts
            call = median_seconds(bare_call)
            call_cpu = median_seconds(bare_call, clock=time.process_time)
            stopwatch = StopwatchNet(net)
            wall = median_seconds(lambda run=run, stopwatch=stopwatch: run(stopwatch), repeats=1, warmup=0)
            start = time.process_time()
            free_nfe = run(free_model)[1]
            solver = (time.process_time() - start) / free_nfe
            rows.append((wall, call, wall / (nfe * call), wall / stopwatch.seconds, solver * 1e6,
                         1 + solver / call_cpu))
        wall, call, *ratios, solver, predicted = (statistics.median(column) for column in zip(*rows))
        print(f"| {name} | {nfe} | {wall:.3f} | {call * 1e3:.3f} | {ratios[0]:.3f} | {ratios[1]:.3f} | {solver:.0f} "
              f"| {predicted:.3f} |", flush=True)

    shape, span, steps = (args.batch, 4 * 8 * 8), 1.0 - 1e-3, 1000
    print(f"\n| Brownian motion, {steps} steps of ({args.batch}, 256) | µs per step | with Lévy area (srk) |")
    print("|---|---:|---:|")
    plain, levy = brownian_motions(shape, span, steps, False), brownian_motions(shape, span, steps, True)
    for label in plain:
        print(f"| {label} | {brownian_query_microseconds(plain[label], span, steps, False):.0f} "
              f"| {brownian_query_microseconds(levy[label], span, steps, True):.0f} |")

if __name__ == "__main__":
    main()
