"""Training throughput of the joint LSGM step, and its overhead over a bare forward + backward.

    python benchmarks/train_throughput.py [--threads 1] [--steps 30] [override ...]

Measured side by side in one process, alternating, on the same batches:
- step:  `Trainer.train_step` — the joint objective, two backward passes (VAE and score model get
         gradients of different losses), spectral/norm regularisers, clipping, the finiteness guard,
         two optimizer steps and the EMA update;
- bare:  one forward of the same networks on the same objective terms and one backward of their sum,
         no optimizer — the least any joint step must do.
Prints images/s for both, the overhead ratio step/bare, and the same for the stage-1 step (the VAE alone, plus
the score model on the detached latents with `train.score_in_stage1`).
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


def parse_arguments(description: str, steps: int) -> argparse.Namespace:
    """--threads (set for torch here), --steps and hydra overrides: the command line of the step-time benchmarks."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def step_config(overrides: list[str]):
    """The config a step-time benchmark trains: no logger, stage 1 for the first STAGE1_STEPS steps of a run too long
    to end, `overrides` on top."""
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose("config", overrides=["logger=none", "train.steps=1000000",
                                            f"train.stage1_steps={STAGE1_STEPS}", *overrides])


def main() -> None:
    args = parse_arguments(__doc__, steps=20)
    cfg = step_config(args.overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, run_dir)
        for _ in range(3):  # warm-up, both phases
            trainer.train_step(next(trainer.stream).x)
        rows = {"stage 1": measure(trainer, 0, args.steps),
                "joint": measure(trainer, cfg.train.stage1_steps, args.steps)}
        trainer.close()
    print(f"batch {cfg.train.batch_size}, {args.threads} thread(s), device {trainer.device}")
    print("| phase | images/s (step) | images/s (bare fwd+bwd) | ms/step | overhead step/bare |")
    print("|---|---:|---:|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {row['images_per_second']:.0f} | {row['bare_images_per_second']:.0f} | "
              f"{row['ms_per_step']:.1f} | {row['overhead']:.2f} |")


if __name__ == "__main__":
    main()
