"""benchmarks/gpu_check.py end to end with --tiny on the CPU (as CI runs it), and its table of device peaks."""

import json
import math

import pytest

from ..conftest import benchmark_module


@pytest.fixture(scope="module")
def gpu_check():
    with benchmark_module("gpu_check") as module:
        yield module


def test_tiny_cpu_run_reports_every_measurement(gpu_check, tmp_path, capsys):
    out = tmp_path / "check.json"
    gpu_check.main(["--tiny", "--device", "cpu", "--threads", "1", "--out", str(out)])
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())

    assert report["device_type"] == "cpu" and report["preset"] == "cifar10" and report["tiny"]
    assert report["data_shape"] == [3, 32, 32] and report["levels"] == 256 and report["batch_size"] == 4
    assert report["amp"] == "bf16"  # the preset's own setting, run through the real trainer
    assert report["peak_tflops"] is None
    assert report["parameters"]["vae"] > 0 and report["parameters"]["score"] > 0
    assert set(report["train"]) == {"vae", "joint"}  # stage 1, then the joint phase
    for phase, row in report["train"].items():
        assert row["phase"] == phase and row["steps"] == 2 and row["skipped"] == 0
        assert row["images_per_second"] > 0 and row["ms_per_step"] > 0
        assert math.isclose(row["images_per_second"] * row["ms_per_step"] / 1000, report["batch_size"], rel_tol=1e-6)
        assert row["peak_memory_gib"] > 0
        assert row["tflop_per_step"] > 0  # the joint step counts the score network too
        assert math.isclose(row["achieved_tflops"], row["tflop_per_step"] / (row["ms_per_step"] / 1000),
                            rel_tol=1e-6)
        assert row["mfu"] is None  # no bf16 peak on a CPU
    assert report["train"]["joint"]["tflop_per_step"] > report["train"]["vae"]["tflop_per_step"]
    for part in ("sampling", "likelihood"):
        row = report[part]
        assert row["images"] == 2 and row["nfe"] > 0 and row["ms_per_image"] > 0 and row["images_per_second"] > 0
        assert row["options"]["rtol"] == row["options"]["atol"] == 1e-3
    assert report["sampling"]["finite"]
    assert 1 < report["likelihood"]["bpd"] < 20  # a fresh model on uniform 8-bit noise: about 8–10 bits/dim

    table = [line for line in printed.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 4  # header, rule, two training phases, sampling, likelihood
    assert all(line.count("|") == 8 for line in table)
    assert "n/a" in table[2] and "ODE sampling" in table[4] and "ODE likelihood" in table[5]


@pytest.mark.parametrize("name, tflops", [("NVIDIA H200", 989.0), ("NVIDIA H100 80GB HBM3", 989.0),
                                          ("NVIDIA H100 PCIe", 756.0), ("NVIDIA A100-SXM4-80GB", 312.0),
                                          ("NVIDIA L4", 121.0), ("NVIDIA L40S", 362.0), ("Tesla V100-SXM2-16GB", None)])
def test_bf16_peaks_match_device_names(gpu_check, name, tflops):
    assert gpu_check.bf16_peak_tflops(name) == tflops


def test_bad_counts_are_refused(gpu_check):
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--steps", "0"])
