"""benchmarks/train_throughput.py on the default preset: both phases' steps run (no divergence from repeating one step
number at the preset's rates: with the KL weight at the warm-up's start, 30 repeated stage-1 steps at the VAE rate 3e-2
had the guard stop the run) and the table carries their rates and overheads."""

import re
import sys

from ..conftest import benchmark_module


def test_step_benchmark_runs_the_default_preset(monkeypatch, capsys):
    with benchmark_module("train_throughput") as module:
        monkeypatch.setattr(sys, "argv", ["train_throughput.py", "--steps", "10", "--threads", "1"])
        module.main()
    output = capsys.readouterr().out
    rows = {name: [float(value) for value in values.split("|")] for name, values in
            re.findall(r"^\| (stage 1|joint) \|([^\n]*)\|$", output, flags=re.MULTILINE)}
    assert set(rows) == {"stage 1", "joint"}, output
    for images, bare, ms, overhead in rows.values():
        assert images > 0 and bare > 0 and ms > 0
        assert 0.5 < overhead < 3.0  # a step does at least the bare pass's work, and not several times it
