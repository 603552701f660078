"""Dropout on CPU: `nvae.layers.Dropout` (16-bit masks, four per 64-bit draw) against ``nn.Dropout``, side by side.

    python benchmarks/dropout_cpu.py [--threads 2] [--steps 10] [override ...]

On CPU, ``nn.Dropout`` draws one number from the generator per element (``bernoulli_``), and in the digits
preset's training step those draws cost more than the arithmetic around them. Measured in one process,
alternating in rounds on the same batches:
- each dropout layer of the preset's VAE and score network on its own input shape (taken from one training step):
  milliseconds per call of both, training mode;
- `Trainer.train_step` of the stage-1 and the joint phase with every dropout layer running our forward, then
  ``nn.Dropout``'s (the same modules, the same p).
Prints both tables: the last column is nn.Dropout's time over ours.
Hydra overrides (e.g. `train.batch_size=128`) select the configuration.
"""

from __future__ import annotations

import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn
from train_throughput import parse_arguments, step_config, timed

from lsgm.train import Trainer
from nvae.layers import Dropout

ROUNDS = 3
ORIGINAL_FORWARD = Dropout.forward


def dropout_inputs(trainer: Trainer, x: torch.Tensor) -> list[torch.Tensor]:
    """The inputs of every dropout layer in one training step, in training mode (one per distinct shape and memory
    format)."""
    seen, inputs = set(), []

    def record(module, args):
        if not module.training:
            return
        tensor = args[0].detach()
        key = (tuple(tensor.shape), tensor.stride())
        if key not in seen:
            seen.add(key)
            inputs.append(tensor.clone(memory_format=torch.preserve_format))

    hooks = [module.register_forward_pre_hook(record) for module in trainer.model.modules()
             if isinstance(module, Dropout) and module.p > 0]
    trainer.train_step(x)
    for hook in hooks:
        hook.remove()
    return inputs


def per_call_ms(function, x: torch.Tensor, calls: int = 20) -> float:
    function(x)
    start = time.perf_counter()
    for _ in range(calls):
        function(x)
    return 1000 * (time.perf_counter() - start) / calls


def layer_rows(inputs: list[torch.Tensor], p: float) -> list[tuple]:
    ours = Dropout(p).train()
    rows = []
    for x in inputs:
        times = {"ours": [], "nn": []}
        for _ in range(ROUNDS):
            times["ours"].append(per_call_ms(ours, x))
            times["nn"].append(per_call_ms(lambda v: F.dropout(v, p, True), x))
        mine, theirs = statistics.median(times["ours"]), statistics.median(times["nn"])
        layout = "channels_last" if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) else ""
        rows.append((tuple(x.shape), layout, mine, theirs, theirs / mine))
    return rows


def step_rows(trainer: Trainer, phases: dict[str, int], steps: int) -> list[tuple]:
    rows = []
    for name, phase_step in phases.items():
        trainer.progress.step = phase_step
        batches = [next(trainer.stream).x for _ in range(steps)]
        times = {"ours": [], "nn": []}
        for _ in range(ROUNDS):
            for variant in ("ours", "nn"):
                if variant == "nn":
                    Dropout.forward = nn.Dropout.forward  # the same modules, torch's forward
                trainer.progress.step = phase_step
                times[variant].append(1000 * timed(trainer.train_step, batches))
                Dropout.forward = ORIGINAL_FORWARD
        mine, theirs = statistics.median(times["ours"]), statistics.median(times["nn"])
        rows.append((name, mine, theirs, theirs / mine))
    return rows



def main() -> None:
    args = parse_arguments(__doc__, steps=10)
    cfg = step_config(args.overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, run_dir)
        for _ in range(3):  # warm-up
            trainer.train_step(next(trainer.stream).x)
        trainer.progress.step = cfg.train.stage1_steps
        inputs = dropout_inputs(trainer, next(trainer.stream).x)
        p = next(module.p for module in trainer.model.modules() if isinstance(module, Dropout) and module.p > 0)
        layers = layer_rows(inputs, p)
        # the joint steps start after the phase's first, which prepares the prior (dropout_inputs took it)
        steps = step_rows(trainer, {"stage 1": 1, "joint": cfg.train.stage1_steps + 1}, args.steps)
        trainer.close()
    print(f"batch {cfg.train.batch_size}, {args.threads} thread(s), p = {p}, median of {ROUNDS} alternating rounds")
    print("| dropout input | layout | ours (ms) | nn.Dropout (ms) | nn / ours |\n|---|---|---:|---:|---:|")
    for shape, layout, mine, theirs, ratio in layers:
        print(f"| {'×'.join(map(str, shape))} | {layout} | {mine:.2f} | {theirs:.2f} | {ratio:.2f} |")
    print("\n| training step | ours (ms) | nn.Dropout (ms) | nn / ours |\n|---|---:|---:|---:|")
    for name, mine, theirs, ratio in steps:
        print(f"| {name} | {mine:.1f} | {theirs:.1f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
