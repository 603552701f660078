"""Training throughput of the joint LSGM step, and its overhead over a bare forward + backward.

    python benchmarks/train_throughput.py [--threads 1] [--steps 30] [override ...]

Measured side by side in one process, alternating, on the same batches:
- step:  `Trainer.train_step` — the joint objective, two backward passes (VAE and score model get
         gradients of different losses), spectral/norm regularisers, clipping, the finiteness guard,
         two optimizer steps and the EMA update;
- bare:  one forward of the same networks on the same objective terms and one backward of their sum,
         no optimizer — the least any joint step must do.
Prints images/s for both, the overhead ratio step/bare, and the same for the stage-1 step (the VAE alone, plus
the score model on the detached latents with `train.score_in_stage1`). With --breakdown it then profiles the
same steps (torch.profiler, CPU) and prints where a step's time goes, by the trainer's `record_function` labels:
step.forward (the losses), step.backward.vae / .score (the two backward passes), step.clip, step.update (the
checks, guarded optimizer steps), step.ema, and the rest (learning rates, bookkeeping); the profiler's own cost
inflates every row a little, so read the shares, not the milliseconds.
Hydra overrides (e.g. `train.batch_size=128`) select the configuration.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from torch.profiler import ProfilerActivity, profile, record_function

from lsgm.train import Trainer

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")
STAGE1_STEPS = 1000


def bare_pass(trainer: Trainer, x: torch.Tensor) -> None:
    """The model's losses in the phase of the trainer's step (`model.losses`: the VAE's and, when it learns, the
    score model's) and one backward of their sum: no clipping, no updates, no EMA."""
    phase = trainer.phase(trainer.progress.step)
    losses = trainer.model.losses(phase, x, trainer.loss_options(x, None, 1.0))
    sum(loss for loss in (losses.loss_vae, losses.loss_score) if loss is not None).backward()
    trainer.model.zero_grad(set_to_none=True)


def timed(fn, batches) -> float:
    start = time.perf_counter()
    for batch in batches:
        fn(batch)
    return (time.perf_counter() - start) / len(batches)


def measure(trainer: Trainer, phase_step: int, steps: int, rounds: int = 3) -> dict:
    """Median seconds per step of the trainer's step and of the bare pass, interleaved in `rounds`."""
    trainer.progress.step = phase_step
    batches = [next(trainer.stream).x for _ in range(steps)]
    step_times, bare_times = [], []
    for _ in range(rounds):
        step_times.append(timed(lambda x: trainer.train_step(x), batches))
        trainer.progress.step = phase_step
        bare_times.append(timed(lambda x: bare_pass(trainer, x), batches))
    step, bare_time = statistics.median(step_times), statistics.median(bare_times)
    batch = batches[0].shape[0]
    return {"images_per_second": batch / step, "bare_images_per_second": batch / bare_time,
            "overhead": step / bare_time, "ms_per_step": 1000 * step, "bare_ms": 1000 * bare_time}


LABELS = ("step.forward", "step.backward.vae", "step.backward.score", "step.clip", "step.update", "step.ema")


def breakdown(trainer: Trainer, phase_step: int, steps: int) -> dict[str, float]:
    """Milliseconds per step under each `record_function` label of `Trainer.train_step` (and "step", the whole)."""
    trainer.progress.step = phase_step
    batches = [next(trainer.stream).x for _ in range(steps)]
    with profile(activities=[ProfilerActivity.CPU]) as profiler, record_function("step"):
        for x in batches:
            trainer.train_step(x)
    totals = {event.key: event.cpu_time_total / 1000 / steps for event in profiler.key_averages()}
    return {label: totals.get(label, 0.0) for label in ("step", *LABELS)}


def parse_arguments(description: str, steps: int, breakdown_option: bool = False) -> argparse.Namespace:
    """--threads (set for torch here), --steps and hydra overrides: the command line of the step-time benchmarks."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=steps)
    if breakdown_option:
        parser.add_argument("--breakdown", action="store_true", help="profile where a step's time goes")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def step_config(overrides: list[str]):
    """The config a step-time benchmark trains: no logger, stage 1 for the first STAGE1_STEPS steps of a run too long
    to end, the KL at full weight (the warm-up's end: the measured steps repeat one step number, and at the warm-up's
    start, KL weight ~0, repeated steps of the default preset's rate drive the posteriors away until the guard stops
    the run), `overrides` on top."""
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose("config", overrides=["logger=none", "train.steps=1000000", "train.kl_warmup=0",
                                            f"train.stage1_steps={STAGE1_STEPS}", *overrides])


def main() -> None:
    args = parse_arguments(__doc__, steps=20, breakdown_option=True)
    cfg = step_config(args.overrides)
    # the joint phase's first step prepares the prior (drop_inactive_var: the VAE over thousands of images): the
    # warm-up takes it, the measured steps start after it
    phases = {"stage 1": 1, "joint": cfg.train.stage1_steps + 1}
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, run_dir)
        for step in (0, 1, cfg.train.stage1_steps, cfg.train.stage1_steps + 1):  # warm-up, both phases
            trainer.progress.step = step
            trainer.train_step(next(trainer.stream).x)
        rows = {name: measure(trainer, step, args.steps) for name, step in phases.items()}
        shares = {name: breakdown(trainer, step, args.steps) for name, step in phases.items()} if args.breakdown else {}
        trainer.close()
    print(f"batch {cfg.train.batch_size}, {args.threads} thread(s), device {trainer.device}")
    print("| phase | images/s (step) | images/s (bare fwd+bwd) | ms/step | overhead step/bare |")
    print("|---|---:|---:|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {row['images_per_second']:.0f} | {row['bare_images_per_second']:.0f} | "
              f"{row['ms_per_step']:.1f} | {row['overhead']:.2f} |")
    if shares:
        print("\n| part of the step (profiled) | " + " | ".join(shares) + " |\n|---|" + "---:|" * len(shares))
        for label in (*LABELS, "rest"):
            cells = []
            for times in shares.values():
                value = times["step"] - sum(times[name] for name in LABELS) if label == "rest" else times[label]
                cells.append(f"{value:.1f} ms ({100 * value / times['step']:.0f}%)")
            print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
