"""The depthwise convolution's weight gradient: `nvae.layers._DepthwiseConv2d` against torch's, side by side.

    python benchmarks/depthwise_backward.py [--threads 2] [--repeats 20]

Part 1 times forward + backward of one 5×5 depthwise convolution at the sizes of the digits decoder cells (batch 64,
channels_last), torch's path and ours alternating in one process. Part 2 times whole training steps of the default
digits preset with every depthwise convolution on one path or the other (the same batches, alternating blocks of
steps), i.e. what the change buys a user. Numbers are milliseconds; the ratio is torch's over ours.

Measured (2-core machine shared with three other processes, 1 thread, torch / ours):
    C=96 at 8×8: 14.9 / 30.0 ms (0.50×, so `nvae.layers.Conv2d` keeps torch's path above 4×4);
    C=192 at 4×4: 40.1 / 10.9 ms (3.7×);  C=384 at 2×2: 55.7 / 7.2 ms (7.8×);
    training step of the default preset with every depthwise layer on one path: 995 / 895 ms (1.11×).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from lsgm.train import Trainer
from nvae.layers import Conv2d

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")
SIZES = ((96, 8), (192, 4), (384, 2))


def timed(function, repeats: int) -> float:
    """Milliseconds per call after three warm-up calls."""
    for _ in range(3):
        function()
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats * 1e3


def layer_times(channels: int, size: int, repeats: int) -> tuple[float, float]:
    """(torch, ours) ms of forward + backward of one depthwise 5×5 convolution, batch 64."""
    conv = Conv2d(channels, channels, 5, size, groups=channels, bias=False)
    x = torch.randn(64, channels, size, size).to(memory_format=torch.channels_last).requires_grad_()

    def step(fast: bool):
        conv.depthwise = fast
        conv(x).pow(2).sum().backward()

    return timed(lambda: step(False), repeats), timed(lambda: step(True), repeats)


def set_depthwise(model: torch.nn.Module, fast: bool) -> None:
    """Every depthwise layer on maps of at most 4×4 on our path (fast) or torch's."""
    for module in model.modules():
        if isinstance(module, Conv2d) and module.groups > 1 and max(module.input_size) <= 4:
            module.depthwise = fast


def step_times(repeats: int) -> tuple[float, float]:
    """(torch, ours) ms per training step of the default digits preset, alternating blocks of steps."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["logger=none"])
    trainer = Trainer(cfg, tempfile.mkdtemp())
    times = {False: [], True: []}
    batch = next(trainer.stream)
    for _ in range(4):
        for fast in (False, True):
            set_depthwise(trainer.model, fast)
            times[fast].append(timed(lambda: trainer.train_step(batch.x, batch.y), repeats // 4 or 1))
    return sum(times[False]) / 4, sum(times[True]) / 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for channels, size in SIZES:
        reference, ours = layer_times(channels, size, args.repeats)
        print(f"C={channels} at {size}×{size}: torch {reference:.2f} ms, ours {ours:.2f} ms ({reference / ours:.2f}×)")
    reference, ours = step_times(args.repeats)
    print(f"training step (default digits preset): torch {reference:.1f} ms, ours {ours:.1f} ms "
          f"({reference / ours:.2f}×)")


if __name__ == "__main__":
    main()
