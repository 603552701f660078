"""One command that measures a machine (a GPU, or the CPU) on a real preset, with no dataset.

    python benchmarks/gpu_check.py                          # CIFAR-10 preset, 20 steps, on the GPU if there is one
    python benchmarks/gpu_check.py --preset mnist --batch-size 128 --out gpu_check.json
    python benchmarks/gpu_check.py --tiny --device cpu      # the same measurements, shrunk to seconds on a CPU
    python benchmarks/gpu_check.py train.compile=true       # hydra overrides after the options

The preset (`experiment=cifar10`, `mnist` or `digits`) is trained by the real `lsgm.train.Trainer` on synthetic
data of the preset's shape: random integer images on the data's level grid, written to a temporary `.npz` and read
through `data=npz`, so they reach the model in [−1, 1] exactly as the real dataset would. Nothing is downloaded.

What each row of the table measures:
- **train stage 1 / train joint** — `Trainer.train_step` in each phase of the preset (stage 1: the VAE alone, plus
  the score model on the detached latents where the preset sets `train.score_in_stage1`, as digits does; joint: the
  VAE on −ELBO with the score prior and the score model on its DSM objective): the model's losses
  (bf16 autocast when the preset says `train.amp=bf16`; the GPU presets do), both backward passes, clipping, the
  finiteness and update guards, both optimizer steps and the EMA. `--warmup` steps per phase are run first and not
  timed (the first joint step also runs `drop_inactive_var`). *images/s* = batch / mean step time over `--steps`.
  *peak memory*: `torch.cuda.max_memory_allocated` during the timed steps on CUDA; on CPU the process's maximum
  resident set size so far (`resource.getrusage`), which only grows, so it bounds the phase from above.
  *TFLOP/step*: the FLOPs of one step counted by `torch.utils.flop_counter.FlopCounterMode` (matrix products,
  convolutions and attention, forward and backward; elementwise work is not counted, so this is model FLOPs).
  *MFU* = TFLOP/step / step time / the device's dense bf16 peak (`PEAK_TFLOPS`, or `--peak-tflops`); n/a on CPU.
- **ODE sampling** — `model.sample(n, "ode")` with the preset's sampler options (dopri5, rtol = atol = 1e-5 unless
  `--ode-tol`): ms per image for a batch of `--sample-images`, and the solver's NFE (network evaluations per batch).
- **ODE likelihood** — `lsgm.evaluate.test_nll(model, x, k=1)`: the bound per image with the probability-flow ODE
  likelihood of the latents (Hutchinson trace), ms per image for a batch of `--nll-images`, and its NFE.
  Sampling and likelihood run in float32 without autocast, as `lsgm.sample` and `lsgm.evaluate` do.

How to read it: the model is freshly initialised, so the ODE's NFE is that of an untrained score model (its mixed
score starts near the N(0, I) prior, an easy ODE); a trained model takes more evaluations, and sampling time
scales with NFE. Training throughput does not depend on the weights. MFU of this model is low by nature: NVAE's
depthwise convolutions, normalisations and SE gates are memory-bound and uncounted; compare runs on the same
preset, not against a transformer's MFU. On a CPU shared with other work, pass `--threads 1`: OpenMP threads that
wait on each other made a --tiny run 60× slower at 2 threads on a loaded 2-core machine. The JSON (`--out`) holds
every number of the table and the setup (device, torch version, batch, parameters, overrides).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from torch.utils.flop_counter import FlopCounterMode

from lsgm.evaluate import test_nll
from lsgm.train import Trainer

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")

# (C, H, W) and levels of each preset's data (configs/data/*.yaml): the synthetic images take this shape
PRESETS = {"cifar10": ((3, 32, 32), 256), "mnist": ((1, 32, 32), 256), "digits": ((1, 8, 8), 17)}

# --tiny: the preset's structure (latent scales, attention resolutions, SDE, schedules) with narrow, shallow
# networks, so that every measurement runs in seconds on a CPU
TINY = ["vae.params.channels=8", "vae.params.groups_per_scale=2", "vae.params.cells_per_group=1",
        "score.net.channels=16",
        "score.net.num_res_blocks=1", "score.net.num_heads=2"]
TINY_DEFAULTS = {"batch_size": 4, "steps": 2, "warmup": 1, "sample_images": 2, "nll_images": 2, "ode_tol": 1e-3}

# dense bf16 tensor-core peaks in FLOP/s (vendor data sheets, without sparsity), matched in order against
# torch.cuda.get_device_name(): more specific names first
PEAK_TFLOPS = [
    ("GH200", 989.0), ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H800", 989.0),
    ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0),
    ("A10G", 70.0), ("A10", 125.0), ("RTX 4090", 165.0), ("RTX 3090", 71.0), ("A6000", 155.0),
]


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else the machine's architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine() or "cpu"


def bf16_peak_tflops(name: str) -> float | None:
    """The dense bf16 peak (TFLOP/s) of a GPU named `name` (`PEAK_TFLOPS`), or None when it is not listed."""
    return next((tflops for key, tflops in PEAK_TFLOPS if key in name), None)


def device_peak_flops(device: torch.device, override_tflops: float | None) -> tuple[str, float | None]:
    """The device's name and its dense bf16 peak in FLOP/s (None: CPU, or a GPU not in `PEAK_TFLOPS`)."""
    if device.type != "cuda":
        return cpu_name(), None
    name = torch.cuda.get_device_name(device)
    peak = override_tflops if override_tflops is not None else bf16_peak_tflops(name)
    return name, None if peak is None else peak * 1e12


def synthetic_npz(path: Path, shape, levels: int, count: int, seed: int = 0) -> Path:
    """`count` random integer images of `shape` in 0..levels−1 (the data's level grid), as `data=npz` reads them."""
    images = np.random.default_rng(seed).integers(0, levels, (count, *shape), dtype=np.int64)
    np.savez(path, x=images.astype(np.uint8 if levels <= 256 else np.int32), levels=np.int64(levels))
    return path


def compose_config(args, data_path: Path):
    overrides = [f"experiment={args.preset}", "data=npz", f"data.root={data_path}", "logger=none",
                 f"device={args.device}", f"train.batch_size={args.batch_size}",
                 *(TINY if args.tiny else []), *([f"threads={args.threads}"] if args.threads else []),
                 *args.overrides]
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose("config", overrides=overrides)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory since the last reset on CUDA; the process's maximum resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def measure_phase(trainer: Trainer, start: int, steps: int, warmup: int, peak_flops: float | None) -> dict:
    """`steps` timed `Trainer.train_step`s from step `start` (after `warmup` untimed ones), then one counted step."""
    device = trainer.device
    trainer.progress.step = start
    phase = trainer.phase(start)
    for _ in range(warmup):
        trainer.train_step(next(trainer.stream).x)
    batches = [next(trainer.stream).x for _ in range(steps)]
    reset_peak_memory(device)
    synchronize(device)
    began = time.perf_counter()
    for x in batches:
        trainer.train_step(x)
    synchronize(device)
    step_seconds = (time.perf_counter() - began) / steps
    peak = peak_memory_bytes(device)
    flops = count_flops(trainer, batches[0])
    batch = batches[0].shape[0]
    achieved = None if flops is None else flops / step_seconds
    return {"phase": phase, "images_per_second": batch / step_seconds, "ms_per_step": 1000 * step_seconds,
            "peak_memory_gib": peak / 2**30, "tflop_per_step": None if flops is None else flops / 1e12,
            "achieved_tflops": None if achieved is None else achieved / 1e12,
            "mfu": None if peak_flops is None or achieved is None else achieved / peak_flops, "steps": steps,
            "skipped": trainer.progress.skipped}


def count_flops(trainer: Trainer, x: torch.Tensor) -> int | None:
    """The FLOPs of one `train_step` on x by `FlopCounterMode` (None where it cannot count, e.g. compiled code)."""
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            trainer.train_step(x)
    except Exception as error:  # noqa: BLE001 — a measurement that fails is reported as missing, not fatal
        print(f"notice: FLOPs not counted ({type(error).__name__}: {error})")
        return None
    return counter.get_total_flops() or None


def measure_sampling(model, n: int, options: dict, device: torch.device) -> dict:
    """Probability-flow ODE sampling of n images: ms per image and NFE (one untimed warm-up on CUDA)."""
    model.eval()
    if device.type == "cuda":
        model.sample(min(n, 2), sampler="ode", **{**options, "rtol": 1e-2, "atol": 1e-2})
    reset_peak_memory(device)
    synchronize(device)
    began = time.perf_counter()
    images, nfe = model.sample(n, sampler="ode", **options)
    synchronize(device)
    seconds = time.perf_counter() - began
    return {"images": n, "ms_per_image": 1000 * seconds / n, "images_per_second": n / seconds, "nfe": int(nfe),
            "peak_memory_gib": peak_memory_bytes(device) / 2**30, "finite": bool(torch.isfinite(images).all()),
            "options": options}


def measure_likelihood(model, x: torch.Tensor, options: dict, device: torch.device) -> dict:
    """`test_nll(k=1)` of the images x in one batch: ms per image, NFE and the bound in bits/dim."""
    reset_peak_memory(device)
    synchronize(device)
    began = time.perf_counter()
    result = test_nll(model, x, k=1, batch_size=x.shape[0], **options)
    synchronize(device)
    seconds = time.perf_counter() - began
    n = x.shape[0]
    return {"images": n, "ms_per_image": 1000 * seconds / n, "images_per_second": n / seconds, "nfe": int(result.nfe),
            "bpd": result.bpd, "peak_memory_gib": peak_memory_bytes(device) / 2**30, "options": options}


def ode_settings(cfg, tol: float | None) -> tuple[dict, dict]:
    """The sampler's options (the preset's `sampler` group) and the likelihood's (`train.final_eval.ode`), both at
    rtol = atol = `tol` when given."""
    sampler = dict(cfg.sampler.get("options") or {})
    likelihood = dict(cfg.train.final_eval.get("ode") or {})
    if tol is not None:
        sampler.update(rtol=tol, atol=tol)
        likelihood.update(rtol=tol, atol=tol)
    return sampler, likelihood


def run_check(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    shape, levels = PRESETS[args.preset]
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as folder:
        folder = Path(folder)
        # enough images that the train split (~76% after the test and validation splits) holds two full batches
        # and the likelihood's images
        count = max(16, math.ceil(max(2 * args.batch_size, args.nll_images) / 0.75) + 4)
        data = synthetic_npz(folder / "synthetic.npz", shape, levels, count, args.seed)
        cfg = compose_config(args, data)
        built = time.perf_counter()
        trainer = Trainer(cfg, folder / "run")
        build_seconds = time.perf_counter() - built
        try:
            device = trainer.device
            name, peak_flops = device_peak_flops(device, args.peak_tflops)
            # each phase from its first step: the joint phase's runs drop_inactive_var, as a run does, untimed
            starts = sorted({0, cfg.train.stage1_steps})
            train = {trainer.phase(start): measure_phase(trainer, start, args.steps, max(args.warmup, 1), peak_flops)
                     for start in starts}
            model = trainer.model
            sampler_options, nll_options = ode_settings(cfg, args.ode_tol)
            with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
                torch.manual_seed(args.seed)
                sampling = measure_sampling(model, args.sample_images, sampler_options, device)
                x = trainer.data["train"].x[: args.nll_images].to(device)
                likelihood = measure_likelihood(model, x, nll_options, device)
            parameters = {"vae": sum(p.numel() for p in trainer.vae_parameters),
                          "score": sum(p.numel() for p in trainer.score_parameters)}
        finally:
            trainer.close()
    return {"device": name, "device_type": device.type, "torch": torch.__version__, "preset": args.preset,
            "tiny": args.tiny, "data_shape": list(shape), "levels": levels, "batch_size": args.batch_size,
            "steps": args.steps, "warmup": args.warmup, "threads": torch.get_num_threads(),
            "amp": cfg.train.amp, "compile": bool(cfg.train.get("compile")), "parameters": parameters,
            "build_seconds": build_seconds,
            "peak_tflops": None if peak_flops is None else peak_flops / 1e12, "train": train,
            "sampling": sampling, "likelihood": likelihood, "overrides": list(args.overrides)}


PHASE_LABELS = {"vae": "stage 1", "joint": "joint", "disjoint": "disjoint (VAE frozen)", "score": "score"}


def _number(value, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _significant(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def markdown(report: dict) -> str:
    """The report as one markdown table, with a line of setup above it."""
    parameters = report["parameters"]
    peak = "n/a" if report["peak_tflops"] is None else f"{report['peak_tflops']:g} TFLOP/s"
    lines = [f"{report['device']} ({report['device_type']}, torch {report['torch']}), preset {report['preset']}"
             f"{' --tiny' if report['tiny'] else ''}, batch {report['batch_size']}, "
             f"{'bf16 autocast' if report['amp'] == 'bf16' else 'float32'}, "
             f"{parameters['vae'] / 1e6:.2f}M VAE + {parameters['score'] / 1e6:.2f}M score parameters, "
             f"{report['threads']} CPU thread(s), bf16 peak {peak}",
             "",
             "| check | images/s | ms per step or image | peak memory (GiB) | TFLOP/step | MFU | NFE |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for phase, row in report["train"].items():
        label = f"train {PHASE_LABELS.get(phase, phase)}"
        mfu = "n/a" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"
        lines.append(f"| {label} | {_number(row['images_per_second'])} | {_number(row['ms_per_step'])} ms/step | "
                     f"{_number(row['peak_memory_gib'], 2)} | {_significant(row['tflop_per_step'])} | {mfu} | – |")
    for label, row in (("ODE sampling", report["sampling"]), ("ODE likelihood (k=1)", report["likelihood"])):
        lines.append(f"| {label}, {row['images']} images | {_number(row['images_per_second'], 2)} | "
                     f"{_number(row['ms_per_image'])} ms/image | {_number(row['peak_memory_gib'], 2)} | – | – | "
                     f"{row['nfe']} |")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cifar10")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps per phase (20; --tiny 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps before them (2; --tiny 1)")
    parser.add_argument("--batch-size", type=int, default=None, help="the preset's train.batch_size (--tiny 4)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--tiny", action="store_true", help="narrow, shallow networks: seconds on a CPU")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's bf16 peak, for MFU")
    parser.add_argument("--sample-images", type=int, default=None, help="images sampled by the ODE (64; --tiny 2)")
    parser.add_argument("--nll-images", type=int, default=None, help="images of the likelihood (64; --tiny 2)")
    parser.add_argument("--ode-tol", type=float, default=None,
                        help="rtol = atol of sampling and likelihood (the preset's 1e-5; --tiny 1e-3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    parser.add_argument("overrides", nargs="*", help="hydra overrides of the preset (e.g. train.amp=null)")
    args = parser.parse_args(argv)
    defaults = TINY_DEFAULTS if args.tiny else {"steps": 20, "warmup": 2, "sample_images": 64, "nll_images": 64,
                                                "ode_tol": None}
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.batch_size is None:
        args.batch_size = TINY_DEFAULTS["batch_size"] if args.tiny else None
    for key in ("steps", "sample_images", "nll_images"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.batch_size is None:  # the preset's own
        with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
            args.batch_size = int(compose("config", overrides=[f"experiment={args.preset}", *args.overrides])
                                  .train.batch_size)
    report = run_check(args)
    print(markdown(report))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
