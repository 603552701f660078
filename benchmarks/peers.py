"""Our samplers against the peers', on the same network, the same time grid and the same initial noise.

    python benchmarks/peers.py [--batch 32] [--hidden 64] [--rounds 5] [--threads 1] [--out peers.md]

Pairs (the network is bench_samplers' TinyEpsNet on (B, 4, 8, 8) latents, the VP-SDE with the linear schedule):

    heun   (18 points, edm_grid)  k-diffusion  sample_heun        } through the VP↔σ map: k-diffusion's x̃ = x/m_t,
    dpm2m  (20 points, edm_grid)  k-diffusion  sample_dpmpp_2m    } σ̃ = σ_t/m_t, D(x̃, σ̃) = x̃ − σ̃ ε(m_t x̃, t(σ̃)),
                                                                     the sigmas our grid's σ̃_i with the final 0
    ddim   (50 steps, T = 1000)   diffusers    DDIMScheduler      (eta 0) on the DDPM chain vp.discretize(1000)
    dpm2m  (20 steps)             diffusers    DPMSolverMultistepScheduler (dpmsolver++, order 2, final σ = 0)
    ode    (rk45, tol 1e-5)       scipy        solve_ivp(method="RK45"), as score_sde and LSGM run it: the same
                                               method and step control, so the same steps
    ode    (dopri5, tol 1e-5)     scipy        the same, torchdiffeq's dopri5 against it at the same tolerances
                                               and at 1.5× them (the note says why)

Columns: NFE, the network calls of each (ours / peer where they differ); max |Δ|, the largest absolute difference
of the two outputs from the same x_T (float32 network), and max |x|, the largest |value| of ours (the scale
float32's rounding is relative to); ours and peer s/sample, the median wall time of a run
divided by the batch; ours/peer, the median over rounds of the ratio of the two runs of one round (the two run
back to back, alternating which goes first, so that the machine's load drifts alike for both). A second table
gives each sampler's own CPU time per network call, measured with a model that costs nothing (eps = x): the part
of the wall time that the network does not explain, which the machine's load blurs far less.

Grids. k-diffusion takes any sigmas: it gets our grid's. diffusers' schedulers run on integer steps t_d = i − 1 of
the chain (ours count i = 1..T): DPMSolverMultistepScheduler takes custom `timesteps`, so it gets our dpm2m grid
rounded to the chain's steps (ours then runs on times i/T, where the VP-SDE's ᾱ(i/T) equals the chain's ᾱ_i by
construction of that chain's betas). DDIMScheduler cannot take custom timesteps and steps from t_d to
t_d − T // steps whatever its grid, so its grid is one of uniform stride; "trailing" (T, T − T/n, …, T/n in our
count) is the one nearest ours (ddim_timesteps: T … 1 evenly, the rounded grid of diffusers' "linspace", which
its step does not follow), and ours runs on it through `timesteps=`; the table's note gives the distance. Both
diffusers schedulers get the chain's ᾱ as a float64 table (`alphas_cumprod`): their own is a float32 cumprod of
the betas, whose rounding near t = 0 (1 − ᾱ ≈ 1e-4) moves σ by up to 1e-4 relative, a difference of tables, not of
solvers (the note gives what it amounts to).

The peers are optional: pip install k-diffusion diffusers (k-diffusion's package imports torchvision, clean-fid
and more; only its `sampling` module is loaded here, by file path if the package import fails).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import statistics
import sys
import time
import types
from pathlib import Path

import scipy
import scipy.integrate
import torch

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:  # run as a script, benchmarks/ is there already; imported (tests), it is put there
    sys.path.insert(0, HERE)
from bench_samplers import benchmark_setup, free_model  # noqa: E402

import sde  # noqa: E402
from sde import sampling  # noqa: E402
from sde.ddpm import DDPMSchedule  # noqa: E402
from sde.grids import uniform_grid  # noqa: E402

T = 1000


# --- the peers, imported if installed ------------------------------------------------------------------------------
def k_diffusion_sampling():
    """k-diffusion's `sampling` module, or None if k-diffusion is not installed. Its package __init__ imports every
    submodule (torchvision, clean-fid, scikit-image, …); when that fails, sampling.py is loaded alone by file path
    under a private package name, with a `utils` holding the one function it uses (`append_dims`)."""
    name = "_k_diffusion_peer"
    if name + ".sampling" in sys.modules:
        return sys.modules[name + ".sampling"]
    try:
        import k_diffusion.sampling

        return k_diffusion.sampling
    except ImportError:
        pass
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None
    package = types.ModuleType(name)
    package.__path__ = list(spec.submodule_search_locations)
    utils = types.ModuleType(name + ".utils")

    def append_dims(x, target_dims):  # k_diffusion.utils.append_dims
        return x[(...,) + (None,) * (target_dims - x.ndim)]

    utils.append_dims = append_dims
    package.utils = utils
    sys.modules[name], sys.modules[name + ".utils"] = package, utils
    path = Path(spec.submodule_search_locations[0]) / "sampling.py"
    module_spec = importlib.util.spec_from_file_location(name + ".sampling", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module
    try:
        module_spec.loader.exec_module(module)
    except ImportError:
        del sys.modules[module_spec.name]
        return None
    return module


def diffusers_schedulers():
    """diffusers' `schedulers` module, or None if diffusers (or what it imports) is not installed."""
    try:
        import diffusers.schedulers

        return diffusers.schedulers
    except ImportError:
        return None


def versions() -> dict[str, str]:
    found = {"torch": torch.__version__, "scipy": scipy.__version__}
    for package in ("torchdiffeq", "k-diffusion", "diffusers"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


# --- pairs: (ours, peer), each a function of eps_fn(x, t) returning (samples, nfe) ----------------------------------
class Counter:
    """eps_fn with a call count, for a peer (ours count their own)."""

    def __init__(self, eps_fn):
        self.eps_fn, self.nfe = eps_fn, 0

    def __call__(self, x, t):
        self.nfe += 1
        return self.eps_fn(x, t)


def peer_run(run):
    """A peer's run(eps_fn) -> samples as run(eps_fn) -> (samples, nfe)."""

    def counted(eps_fn):
        counter = Counter(eps_fn)
        return run(counter), counter.nfe

    return counted


def karras_denoiser(eps_fn, table: dict):
    """k-diffusion's model D(x̃, σ̃) = x̃ − σ̃ ε(m_t x̃, t(σ̃)), t and m_t looked up in a `sigma_table` for the σ̃ k-diffusion
    passes, as our samplers read them from the grid."""

    def denoiser(x, sigma):
        s = float(sigma[0])
        t, m = table[s]
        return x - s * eps_fn(x * m, t)

    return denoiser


def sigma_table(vp: sde.SDE, times: torch.Tensor, sigmas: torch.Tensor, batch: int) -> dict:
    """σ̃_i (as a float of the sigmas' dtype, as k-diffusion passes them) ↦ (t_i as a (B,) tensor, m_i)."""
    mean_coeff, _ = vp.marginal(times.double())
    return {s: (t.expand(batch), m) for s, t, m in zip(sigmas.tolist(), times.to(sigmas.dtype), mean_coeff.tolist())}


def karras_pair(kd, name: str, vp: sde.SDE, x_T: torch.Tensor, times: torch.Tensor):
    """ours `name` (heun, dpm2m) on `times` against k-diffusion's sampler on the sigmas σ̃_i = σ_i/m_i, 0."""
    peer = {"heun": kd.sample_heun, "dpm2m": kd.sample_dpmpp_2m}[name]
    mean_coeff, std = vp.marginal(times)
    sigmas = torch.cat([std / mean_coeff, torch.zeros(1, dtype=torch.float64)]).to(x_T.dtype)
    table = sigma_table(vp, times, sigmas[:-1], x_T.shape[0])
    x_tilde = x_T / float(mean_coeff[0])

    def ours(eps_fn):
        return sampling.SAMPLERS[name](eps_fn, vp, x_T, times)

    def theirs(eps_fn):
        return peer(karras_denoiser(eps_fn, table), x_tilde, sigmas, disable=True)

    return ours, peer_run(theirs)


def chain_of(vp: sde.SDE, steps: int = T) -> DDPMSchedule:
    """The DDPM chain of `steps` steps whose ᾱ_i is the SDE's ᾱ(i/steps) = m²_{i/steps} (β_i = 1 − ᾱ_i/ᾱ_{i−1})."""
    mean_coeff, _ = vp.marginal(torch.arange(steps + 1, dtype=torch.float64) / steps)
    log_alpha_bar = 2 * torch.log(mean_coeff)
    return DDPMSchedule(-torch.expm1(log_alpha_bar[1:] - log_alpha_bar[:-1]))


def diffusers_loop(scheduler, eps_fn, x_T: torch.Tensor, model_times: dict):
    """diffusers' sampling loop: the model at each of scheduler.timesteps, then scheduler.step."""
    x = x_T
    for t in scheduler.timesteps:
        x = scheduler.step(eps_fn(x, model_times[int(t)]), t, x).prev_sample
    return x


def model_times_of(timesteps, x_T: torch.Tensor) -> dict:
    """t_d ↦ the network's time (t_d + 1)/T as a (B,) tensor, made once (as a diffusers model gets t_d)."""
    return {int(t): torch.full((x_T.shape[0],), (int(t) + 1) / T, dtype=x_T.dtype) for t in timesteps}


def ddim_pair(ds, vp: sde.VPSDE, x_T: torch.Tensor, steps: int = 50, float64_table: bool = True):
    """ours ddim on vp.discretize(T) against diffusers' DDIMScheduler (trailing spacing, eta 0, no clipping) on the
    same betas and ᾱ table, both on diffusers' grid. Returns (ours, peer, our timesteps)."""
    if T % steps:
        raise ValueError(f"diffusers' DDIM steps by T // steps: compare at steps dividing T = {T}, got {steps}")
    schedule = vp.discretize(T)
    scheduler = ds.DDIMScheduler(num_train_timesteps=T, trained_betas=schedule.betas.numpy(), clip_sample=False,
                                 set_alpha_to_one=True, timestep_spacing="trailing", prediction_type="epsilon")
    if float64_table:  # (module docstring)
        scheduler.alphas_cumprod = schedule.alpha_bars.clone()
    scheduler.set_timesteps(steps)
    timesteps = [int(t) + 1 for t in scheduler.timesteps]
    model_times = model_times_of(scheduler.timesteps, x_T)

    def ours(eps_fn):
        return sampling.sample_ddim(sampling.discrete_eps_fn(eps_fn, T), schedule, x_T, timesteps=timesteps)

    def theirs(eps_fn):
        scheduler.set_timesteps(steps)
        return diffusers_loop(scheduler, eps_fn, x_T, model_times)

    return ours, peer_run(theirs), timesteps


def dpm_pair(ds, vp: sde.VPSDE, x_T: torch.Tensor, times: torch.Tensor, float64_table: bool = True):
    """ours dpm2m on the times i/T of `times` rounded to the chain's steps against diffusers'
    DPMSolverMultistepScheduler (dpmsolver++, order 2, midpoint, final σ = 0) on timesteps i − 1 of `chain_of(vp)`.
    Returns (ours, peer, our times)."""
    steps = torch.unique(torch.round(times * T).long().clamp(1, T)).flip(0)
    grid = steps.double() / T
    chain = chain_of(vp)
    scheduler = ds.DPMSolverMultistepScheduler(
        num_train_timesteps=T, trained_betas=chain.betas.numpy(), algorithm_type="dpmsolver++", solver_order=2,
        solver_type="midpoint", lower_order_final=False, final_sigmas_type="zero", prediction_type="epsilon")
    if float64_table:
        scheduler.alphas_cumprod = chain.alpha_bars.clone()
    timesteps = (steps - 1).tolist()
    model_times = model_times_of(timesteps, x_T)

    def ours(eps_fn):
        return sampling.sample_dpm2m(eps_fn, vp, x_T, grid)

    def theirs(eps_fn):
        scheduler.set_timesteps(timesteps=timesteps)
        return diffusers_loop(scheduler, eps_fn, x_T, model_times)

    return ours, peer_run(theirs), grid


def scipy_rk45(eps_fn, vp: sde.SDE, x_T: torch.Tensor, t_end: float, rtol: float, atol: float):
    """The probability-flow ODE as score_sde's `get_ode_sampler` and LSGM run it: scipy's RK45 on the flattened
    state (float64 numpy), the drift computed in torch in x_T's dtype from a fresh tensor at each call."""
    shape, dtype = x_T.shape, x_T.dtype

    def ode_func(t, y):
        x = torch.from_numpy(y.reshape(shape)).to(dtype)
        drift = vp.coefficients(torch.tensor(t, dtype=torch.float64)).flow_drift(
            x, eps_fn(x, torch.full((shape[0],), t, dtype=dtype)))
        return drift.numpy().reshape(-1)

    solution = scipy.integrate.solve_ivp(ode_func, (vp.T, t_end), x_T.double().numpy().reshape(-1), rtol=rtol,
                                         atol=atol, method="RK45")
    return torch.from_numpy(solution.y[:, -1]).reshape(shape).to(dtype), solution.nfev


def ode_pair(vp: sde.SDE, x_T: torch.Tensor, method: str, t_end: float = 1e-5, rtol: float = 1e-5,
             atol: float = 1e-5, peer_tolerance_factor: float = 1.0):
    """ours ode (`method`: rk45, or torchdiffeq's dopri5) against scipy's RK45 from T to t_end, scipy at
    tolerances × the factor."""

    def ours(eps_fn):
        return sampling.sample_ode(eps_fn, vp, x_T, uniform_grid(1, t_end), method=method, rtol=rtol, atol=atol)

    def theirs(eps_fn):
        return scipy_rk45(eps_fn, vp, x_T, t_end, rtol * peer_tolerance_factor, atol * peer_tolerance_factor)

    return ours, theirs


# --- measurement ---------------------------------------------------------------------------------------------------
def timed(run, eps_fn) -> float:
    start = time.perf_counter()
    run(eps_fn)
    return time.perf_counter() - start


def solver_microseconds(run) -> float:
    """CPU µs per model call of a run with the free model (eps = x): the sampler's own work."""
    start = time.process_time()
    nfe = run(free_model)[1]
    return (time.process_time() - start) / nfe * 1e6


def compare(ours, theirs, net, batch: int, rounds: int) -> dict:
    """NFE, max |Δ| and the interleaved timings of one pair (module docstring)."""
    with torch.no_grad():
        x_ours, nfe_ours = ours(net)
        x_theirs, nfe_theirs = theirs(net)
        walls, ratios = ([], []), []
        for k in range(rounds):
            if k % 2:
                peer, mine = timed(theirs, net), timed(ours, net)
            else:
                mine, peer = timed(ours, net), timed(theirs, net)
            walls[0].append(mine)
            walls[1].append(peer)
            ratios.append(mine / peer)
        solver = [statistics.median(solver_microseconds(run) for _ in range(3)) for run in (ours, theirs)]
    return {"nfe": (nfe_ours, nfe_theirs), "delta": float((x_ours - x_theirs).abs().max()),
            "scale": float(x_ours.abs().max()),
            "wall": tuple(statistics.median(w) / batch for w in walls), "ratio": statistics.median(ratios),
            "solver_us": tuple(solver)}


def own_table_delta(pair, net) -> float:
    """max |Δ| between a diffusers scheduler on its own float32 ᾱ table and ours."""
    with torch.no_grad():
        return float((pair[0](net)[0] - pair[1](net)[0]).abs().max())


def pairs(vp: sde.VPSDE, x_T: torch.Tensor):
    """label -> (peer label, ours, theirs, note(net) -> str or None), for the installed peers; and the missing."""
    found, missing = {}, []
    kd, ds = k_diffusion_sampling(), diffusers_schedulers()
    if kd is None:
        missing.append("k-diffusion")
    else:
        for name in ("heun", "dpm2m"):
            times = sampling.default_grid(name, vp)
            ours, theirs = karras_pair(kd, name, vp, x_T, times)
            peer = "sample_heun" if name == "heun" else "sample_dpmpp_2m"
            found[f"{name} ({len(times)} points, edm_grid)"] = (f"k-diffusion {peer}", ours, theirs, None)
    if ds is None:
        missing.append("diffusers")
    else:
        ours, theirs, timesteps = ddim_pair(ds, vp, x_T)
        default = sampling.ddim_timesteps(T, len(timesteps))
        offset = max(abs(a - b) for a, b in zip(default, timesteps))
        own = ddim_pair(ds, vp, x_T, float64_table=False)

        def ddim_note(net, own=own, timesteps=timesteps, default=default, offset=offset):
            return (f"ddim/diffusers: diffusers' trailing grid {timesteps[0]}, {timesteps[1]}, …, {timesteps[-1]} "
                    f"(our count), run by both; our default ddim_timesteps({T}, {len(timesteps)}) = {default[0]}, "
                    f"{default[1]}, …, {default[-1]} lies up to {offset} steps from it. With its own float32 ᾱ "
                    f"table DDIMScheduler is {own_table_delta(own, net):.2e} from ours.")

        found[f"ddim ({len(timesteps)} steps, T = {T})"] = ("diffusers DDIMScheduler", ours, theirs, ddim_note)
        ours, theirs, grid = dpm_pair(ds, vp, x_T, sampling.default_grid("dpm2m", vp))
        own = dpm_pair(ds, vp, x_T, sampling.default_grid("dpm2m", vp), float64_table=False)

        def dpm_note(net, own=own, grid=grid):
            return (f"dpm2m/diffusers: our default dpm2m grid rounded to the chain's steps: "
                    f"{', '.join(str(round(float(t) * T)) for t in grid)} (our count). With its own float32 ᾱ table "
                    f"DPMSolverMultistepScheduler is {own_table_delta(own, net):.2e} from ours.")

        found[f"dpm2m ({len(grid)} steps of the chain)"] = ("diffusers DPMSolverMultistepScheduler", ours, theirs,
                                                            dpm_note)
    ours, theirs = ode_pair(vp, x_T, "rk45")
    found["ode (rk45, rtol = atol = 1e-5)"] = ("scipy solve_ivp RK45", ours, theirs, None)
    ours, theirs = ode_pair(vp, x_T, "dopri5")
    found["ode (dopri5, rtol = atol = 1e-5)"] = ("scipy solve_ivp RK45", ours, theirs, lambda net: ODE_NOTE)
    ours, theirs = ode_pair(vp, x_T, "dopri5", peer_tolerance_factor=1.5)
    found["ode (dopri5, rtol = atol = 1e-5) "] = ("scipy RK45, rtol = atol = 1.5e-5", ours, theirs, None)
    return found, missing


ODE_NOTE = ("ode/scipy: torchdiffeq's dopri5 estimates the local error with Shampine's embedded pair, exactly 2/3 of "
            "the Dormand–Prince estimate scipy's RK45 uses (RK45.E = −1.5 × dopri5's c_error), so at equal rtol/atol "
            "scipy takes smaller steps; the second ode row gives scipy tolerances 1.5× ours, which makes the error "
            "control alike (the initial step still differs). The outputs differ by about the solvers' own error.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved runs of each pair (medians)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="peers.md")
    args = parser.parse_args()
    vp, net, x_T = benchmark_setup(args.batch, args.hidden, args.threads)
    found, missing = pairs(vp, x_T)
    lines = [f"batch {args.batch} × (4, 8, 8), hidden {args.hidden}, {args.threads} thread(s), {args.rounds} rounds; "
             + ", ".join(f"{k} {v}" for k, v in versions().items()), "",
             "| sampler | peer | NFE | max abs Δ | max abs x | ours s/sample | peer s/sample | ours/peer |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    solver_lines = ["", "| sampler | peer | ours solver CPU µs/call | peer solver CPU µs/call | ours/peer |",
                    "|---|---|---:|---:|---:|"]
    notes = []
    for label, (peer, ours, theirs, note) in found.items():
        result = compare(ours, theirs, net, args.batch, args.rounds)
        nfe = result["nfe"]
        nfe_text = str(nfe[0]) if nfe[0] == nfe[1] else f"{nfe[0]} / {nfe[1]}"
        lines.append(f"| {label.strip()} | {peer} | {nfe_text} | {result['delta']:.2e} | {result['scale']:.2e} "
                     f"| {result['wall'][0]:.2e} | {result['wall'][1]:.2e} | {result['ratio']:.3f} |")
        mine, theirs_us = result["solver_us"]
        solver_lines.append(f"| {label.strip()} | {peer} | {mine:.0f} | {theirs_us:.0f} | {mine / theirs_us:.2f} |")
        print(lines[-1], flush=True)
        if note is not None:
            notes.append(note(net))
    if missing:
        notes.append(f"not installed, so not compared: {', '.join(missing)}.")
    text = "\n".join(lines + solver_lines + [""] + [f"- {note}" for note in notes]) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
