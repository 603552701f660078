"""What `train.compile=true` costs and gains: compile time at the first step of each phase, and the step time after.

    python benchmarks/compile_gain.py [--threads 2] [--steps 10] [override ...]

Builds the trainer twice from one config (hydra overrides select it; the digits preset by default), eager and with
`train.compile=true`, and for stage 1 and the joint phase times the phase's first step (where torch.compile traces
and compiles), then, after two more steps (guards settle), the mean of `--steps` steps. Prints both, the gain
eager/compiled per step, and the number of steps after which the compile time is paid back at the default preset's
split of stage-1 and joint steps. Minutes on a CPU: compiling is most of it.

Measured: see the README, "Training".
"""

from __future__ import annotations

import tempfile
import time

from hydra import compose, initialize_config_dir
from train_throughput import CONFIGS, STAGE1_STEPS, parse_arguments, step_config

from lsgm.train import Trainer


def phase_times(compiled: bool, overrides: list[str], steps: int) -> dict[str, tuple[float, float]]:
    """{phase: (seconds of its first step, seconds per step after it)} for stage 1 and the joint phase."""
    cfg = step_config([f"train.compile={str(compiled).lower()}", *overrides])
    times = {}
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, run_dir)
        for phase, first_step in (("stage 1", 0), ("joint", STAGE1_STEPS)):
            trainer.progress.step = first_step
            batches = [next(trainer.stream).x for _ in range(steps + 3)]
            start = time.perf_counter()
            trainer.train_step(batches[0])
            first = time.perf_counter() - start
            for x in batches[1:3]:
                trainer.train_step(x)
            start = time.perf_counter()
            for x in batches[3:]:
                trainer.train_step(x)
            times[phase] = (first, (time.perf_counter() - start) / steps)
        trainer.close()
    return times


def main() -> None:
    args = parse_arguments(__doc__, steps=10)
    eager = phase_times(False, args.overrides, args.steps)
    compiled = phase_times(True, args.overrides, args.steps)
    print(f"{args.threads} thread(s), {args.steps} timed steps per phase")
    print("| phase | eager ms/step | compiled ms/step | gain | compile time at its first step (s) |")
    print("|---|---:|---:|---:|---:|")
    for phase in eager:
        print(f"| {phase} | {eager[phase][1] * 1e3:.0f} | {compiled[phase][1] * 1e3:.0f} | "
              f"{eager[phase][1] / compiled[phase][1]:.2f}× | {compiled[phase][0] - eager[phase][0]:.1f} |")
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        train = compose("config", overrides=args.overrides).train  # the preset's own split, not the benchmark's
    stage1_share = train.stage1_steps / train.steps
    saved = stage1_share * (eager["stage 1"][1] - compiled["stage 1"][1]) + \
        (1 - stage1_share) * (eager["joint"][1] - compiled["joint"][1])
    cost = sum(compiled[phase][0] - eager[phase][0] for phase in eager)
    print(f"paid back after {cost / saved:.0f} steps at the preset's split ({train.stage1_steps} of {train.steps} "
          "in stage 1)" if saved > 0 else "compiled steps are not faster here: never paid back")


if __name__ == "__main__":
    main()
