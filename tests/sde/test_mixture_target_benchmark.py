"""benchmarks/mixture_target.py: every chunk size gives the whole batch's target, and the table restores the default."""

import re
import sys

import sde.gaussian

from ..conftest import benchmark_module


def test_mixture_target_benchmark_rows_agree(monkeypatch, capsys):
    default = sde.gaussian.MIXTURE_CHUNK
    with benchmark_module("mixture_target") as module:
        monkeypatch.setattr(sys, "argv", ["mixture_target.py", "--rows", "40", "--components", "8", "--dims", "300",
                                          "--repeats", "2"])
        module.main()
    output = capsys.readouterr().out
    rows = re.findall(r"^\| (whole batch|2\^\d+(?: \(default\))?) \| ([\d.]+) \| ([\d.]+) \| ([\d.e+-]+) \|$", output,
                      flags=re.MULTILINE)
    assert len(rows) == 5 and sum("(default)" in name for name, *_ in rows) == 1, output
    for _, ms, speedup, difference in rows:
        assert float(ms) > 0 and float(speedup) > 0
        assert float(difference) < 1e-5  # the same arithmetic on row slices: equal up to float32 summation order
    assert sde.gaussian.MIXTURE_CHUNK == default
