"""benchmarks/nll_tolerance.py: the NLL estimate against ODE tolerance, probes and k, on a tiny checkpoint."""

import math

import pytest
import torch

import lsgm
from lsgm import evaluate
from lsgm.build import load_splits

from ..conftest import benchmark_module


@pytest.fixture(scope="module")
def benchmark():
    with benchmark_module("nll_tolerance") as module:
        yield module


def test_rows_are_paired_differences_against_each_k_reference(benchmark, tiny_checkpoint, tmp_path):
    rows = benchmark.main([str(tiny_checkpoint), "--images", "6", "--tolerances", "1e-2", "--probes", "1", "2",
                           "--k", "1", "2", "--reference-tolerance", "1e-4", "--reference-probes", "2",
                           "--threads", "1", "--out", str(tmp_path)])
    assert [(r["k"], r["tolerance"], r["probes"], r["reference"]) for r in rows] == [
        (1, 1e-4, 2, True), (1, 1e-2, 1, False), (1, 1e-2, 2, False),
        (2, 1e-4, 2, True), (2, 1e-2, 1, False), (2, 1e-2, 2, False)]
    # a row is test_nll of the same images from the same seed, in bits/dim
    model = lsgm.load(tiny_checkpoint)
    x = load_splits(model.config.data)["test"].x[:6]
    torch.manual_seed(0)
    direct = evaluate.test_nll(model, x, k=2, batch_size=6, progress=False, rtol=1e-2, atol=1e-2)
    assert rows[4]["bits_per_dim"] == pytest.approx(direct.bpd, rel=1e-5)
    # Δ is the paired mean difference against its own k's reference; the reference's Δ is 0
    assert rows[0]["delta"] == 0.0 and rows[3]["delta"] == 0.0
    for entry, reference in [(rows[1], rows[0]), (rows[5], rows[3])]:
        assert entry["delta"] == pytest.approx(entry["bits_per_dim"] - reference["bits_per_dim"], abs=1e-9)
        assert entry["delta_stderr"] == pytest.approx(entry["delta_spread"] / math.sqrt(6), rel=1e-9)
    assert all(entry["nfe"] > 0 and entry["seconds_per_image"] > 0 for entry in rows)
    lines = (tmp_path / "nll_tolerance.csv").read_text().splitlines()
    assert lines[0].startswith("k,method,tolerance,probes,bits_per_dim,delta") and len(lines) == 7
    assert (tmp_path / "nll_tolerance.md").read_text().count("reference") >= 2


def test_rows_of_each_method(benchmark, tiny_checkpoint, tmp_path):
    """--methods adds each method's rows against the one dopri5 reference; an rk45 row is test_nll with rk45."""
    rows = benchmark.main([str(tiny_checkpoint), "--images", "4", "--tolerances", "1e-2", "--probes", "1", "--k", "1",
                           "--methods", "dopri5", "rk45", "--reference-tolerance", "1e-3", "--reference-probes", "1",
                           "--threads", "1", "--out", str(tmp_path)])
    assert [(r["method"], r["tolerance"], r["reference"]) for r in rows] == [
        ("dopri5", 1e-3, True), ("dopri5", 1e-2, False), ("rk45", 1e-2, False)]
    model = lsgm.load(tiny_checkpoint)
    torch.manual_seed(0)
    direct = evaluate.test_nll(model, load_splits(model.config.data)["test"].x[:4], k=1, batch_size=4,
                               progress=False, method="rk45", rtol=1e-2, atol=1e-2)
    assert rows[2]["bits_per_dim"] == pytest.approx(direct.bpd, rel=1e-5) and rows[2]["nfe"] == direct.nfe


def test_bad_arguments_are_refused(benchmark, tiny_checkpoint):
    for bad in (["--probes", "0"], ["--images", "1"], ["--tolerances", "0"]):
        with pytest.raises(SystemExit) as error:
            benchmark.parse_arguments([str(tiny_checkpoint), *bad])
        assert error.value.code == 2
