"""benchmarks/nfe_vs_quality.py end to end on a tiny checkpoint, and its parsing of sweep entries."""

import argparse
import csv

import pytest
import torch
from PIL import Image

from ..conftest import benchmark_module


@pytest.fixture(scope="module")
def benchmark():
    with benchmark_module("nfe_vs_quality") as module:
        yield module


def test_entries_parse_to_sampler_options_and_groups_expand(benchmark):
    entry = benchmark.parse_entry("ode:rtol=1e-3,atol=1e-3,method=bosh3")
    assert (entry.sampler, entry.options) == ("ode", {"rtol": 1e-3, "atol": 1e-3, "method": "bosh3"})
    assert benchmark.parse_entry("ddpm").options == {}
    sweep = benchmark.expand_sweep(["default", "sde:steps=10"])
    assert len(sweep) == len(benchmark.DEFAULT_SWEEP) + 1 and sweep[-1].options == {"steps": 10}
    for bad, message in [("fancy", "unknown sampler"), ("ddim:steps", "key=value"), ("ddim:stride=2", "no option")]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            benchmark.parse_entry(bad)


def test_point_labels_show_equal_values_once(benchmark):
    assert benchmark.point_label("rtol=1e-2,atol=1e-2") == "1e-2"
    assert benchmark.key_label("rtol=1e-2,atol=1e-2") == "rtol = atol"
    assert benchmark.point_label("method=srk,steps=100") == "srk/100"
    assert benchmark.family_label("ddpm", [""]) == "ddpm"


def test_sweep_writes_the_table_and_plot(benchmark, tiny_checkpoint, tmp_path, monkeypatch):
    """The CSV and the plot; with --wandb the table also as a wandb.Table in an offline run in --out."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    rows = benchmark.main([str(tiny_checkpoint), "--num-samples", "12", "--batch-size", "8", "--out", str(tmp_path),
                           "--threads", str(torch.get_num_threads()), "--wandb",
                           "--samplers", "heun:steps=2", "dpm2m:steps=3", "ddim:steps=2", "ode:rtol=1e-2,atol=1e-2"])
    assert [row["sampler"] for row in rows] == [benchmark.REFERENCE, "heun", "dpm2m", "ddim", "ode"]
    assert [row["nfe"] for row in rows[1:4]] == [3, 3, 2]
    assert all(row["num_images"] == 12 and row["digits_fd"] > 0 for row in rows)
    with open(tmp_path / "nfe_vs_quality.csv") as handle:
        written = list(csv.DictReader(handle))
    assert [row["options"] for row in written][1:] == ["steps=2", "steps=3", "steps=2", "rtol=1e-2,atol=1e-2"]
    assert float(written[1]["digits_fd"]) == pytest.approx(rows[1]["digits_fd"])
    with Image.open(tmp_path / "nfe_vs_quality.png") as image:
        assert image.size == (1000, 560)
    table = (tmp_path / "tables" / "nfe_vs_quality.csv").read_text().splitlines()
    assert table[0] == ",".join(benchmark.COLUMNS) and len(table) == 1 + len(rows)
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    assert [path.name.rsplit("_", 2)[0] for path in (run / "files" / "media" / "table").glob("*.table.json")] == [
        "nfe_vs_quality"]
