"""lsgm.log and lsgm.images: metrics.jsonl carries the numbers, offline wandb runs land in the run
folder (one folder per run), disabled/none modes write no wandb files, PNG grids are pixel-exact."""

import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from lsgm.images import image_grid, save_image_grid, upscale_factor
from lsgm.log import RunLogger


@pytest.fixture(autouse=True)
def quiet_local_wandb(tmp_path, monkeypatch):
    """Keep wandb silent, offline-capable and out of the home directory."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    for variable in ("WANDB_MODE", "WANDB_DIR", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(variable, raising=False)
    for variable, folder in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"),
                             ("WANDB_DATA_DIR", "data"), ("WANDB_ARTIFACT_DIR", "artifacts")):
        monkeypatch.setenv(variable, str(tmp_path / "wandb-home" / folder))


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def flushed_history(run):
    """The bytes of an offline run's run-*.wandb log; wandb-core writes it out a few milliseconds after
    run.finish() returns, so wait (at most 10 s) until it holds more than its 7-byte header."""
    (history,) = run.glob("run-*.wandb")
    deadline = time.monotonic() + 10.0
    while history.stat().st_size <= 7 and time.monotonic() < deadline:
        time.sleep(0.02)
    return history.read_bytes()


def test_metrics_jsonl_lines_carry_the_logged_numbers(tmp_path):
    with RunLogger(tmp_path / "run", mode="none") as logger:
        logger.log({"loss": 1.25, "nfe": 38, "grad_norm": np.float32(0.5), "kl": torch.tensor(3.0)}, step=10)
        logger.log({"loss": torch.tensor([0.75]), "skipped": True, "diverged": float("nan")}, step=20)
        with pytest.raises(TypeError, match="loss: expected a single number"):
            logger.log({"loss": torch.ones(2)}, step=30)
        with pytest.raises(TypeError, match="name: expected a number"):
            logger.log({"name": "digits"}, step=30)
        with pytest.raises(ValueError, match="reserved"):
            logger.log({"step": 1.0}, step=30)
    first, second = read_metrics(tmp_path / "run")
    assert {key: first[key] for key in ("step", "loss", "nfe", "grad_norm", "kl")} == {
        "step": 10, "loss": 1.25, "nfe": 38, "grad_norm": 0.5, "kl": 3.0}
    assert second["step"] == 20 and second["loss"] == 0.75 and second["skipped"] == 1
    assert math.isnan(second["diverged"])
    assert second["time"] >= first["time"] and 0 <= first["elapsed"] <= second["elapsed"]
    with RunLogger(tmp_path / "run", mode="none") as resumed:  # a resumed run appends
        resumed.log({"loss": 0.5}, step=30)
    assert [record["step"] for record in read_metrics(tmp_path / "run")] == [10, 20, 30]


def test_offline_runs_are_written_inside_the_run_folder_one_per_run(tmp_path):
    run_dir = tmp_path / "run"
    for index in range(2):  # as a hydra multirun does: finish one run, start the next
        logger = RunLogger(run_dir, name=f"sweep-{index}", group="sweep", tags=["cpu", "digits"],
                           notes="test", config={"lr": 0.00123 + index, "data": {"name": "digits"}})
        logger.log({"loss": 2.0 - index}, step=1)
        logger.log_images("samples/ema", torch.zeros(4, 1, 8, 8), step=1)
        logger.log_table("rate_distortion", ["t", "bits"], [[0.5, 1.0], [1.0, 2.0]])
        logger.summary({"test_bpd": 1.5, "checkpoint": "checkpoints/best.pt"})
        logger.finish()
        logger.finish()  # a second finish does nothing
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    indices = []  # which sweep member each folder holds (the folders sort by their random id)
    for run in runs:
        content = flushed_history(run)
        assert b"test_bpd" in content and b"rate_distortion" in content
        (index,) = [index for index in range(2) if f"sweep-{index}".encode() in content]
        assert f"{0.00123 + index}".encode() in content  # its own config
        assert len(list((run / "files" / "media" / "images").rglob("*.png"))) == 1
        indices.append(index)
    assert sorted(indices) == [0, 1]
    assert len(read_metrics(run_dir)) == 2
    assert (run_dir / "samples" / "samples_ema_0000001.png").is_file()
    table = (run_dir / "tables" / "rate_distortion.csv").read_text().splitlines()
    assert table == ["t,bits", "0.5,1.0", "1.0,2.0"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary == {"test_bpd": 1.5, "checkpoint": "checkpoints/best.pt"}


@pytest.mark.parametrize("mode", ["disabled", "none"])
def test_disabled_and_none_write_no_wandb_files(tmp_path, mode):
    with RunLogger(tmp_path / "run", mode=mode, config={"lr": 1e-3}) as logger:
        logger.log({"loss": 1.0}, step=1)
        image = logger.log_images("recon", torch.zeros(2, 3, 4, 4), step=1)
        assert logger.log_images("recon", image, step=2) == image  # an existing PNG is taken as is
        logger.summary({"bpd": 2.0})
    assert not (tmp_path / "run" / "wandb").exists() and not (tmp_path / "wandb-home").exists()
    written = sorted(path.name for path in (tmp_path / "run").iterdir())
    assert written == ["metrics.jsonl", "samples", "summary.json"]


def test_mode_none_never_imports_wandb(tmp_path):
    script = ("import sys; from lsgm.log import RunLogger\n"
              f"logger = RunLogger({str(tmp_path)!r}, mode='none')\n"
              "logger.log({'a': 1}, step=0); logger.finish()\n"
              "assert 'wandb' not in sys.modules, 'wandb was imported'")
    subprocess.run([sys.executable, "-c", script], check=True)


def test_unknown_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="offline, online, disabled, none"):
        RunLogger(tmp_path, mode="offlin")


# --------------------------------------------------------------------------------------------------
# PNG grids


def test_checkerboard_grid_has_expected_size_and_pixels(tmp_path):
    checkerboard = torch.tensor([[-1.0, 1.0], [1.0, -1.0]])
    images = torch.stack([checkerboard, -checkerboard, torch.zeros(2, 2)])[:, None]  # (3, 1, 2, 2)
    path = save_image_grid(images, tmp_path / "grid" / "board.png", nrow=2, padding=1, scale=3,
                           pad_value=-1.0)
    with Image.open(path) as png:
        assert png.mode == "L" and png.size == (1 + 2 * (6 + 1), 1 + 2 * (6 + 1))  # (width, height)
        pixels = np.asarray(png)
    first = np.kron(np.array([[0, 255], [255, 0]], np.uint8), np.ones((3, 3), np.uint8))
    assert np.array_equal(pixels[1:7, 1:7], first)
    assert np.array_equal(pixels[1:7, 8:14], 255 - first)
    assert (pixels[8:14, 1:7] == 128).all()  # x = 0 -> round(127.5) = 128
    assert (pixels[0] == 0).all() and (pixels[:, 7] == 0).all() and (pixels[8:14, 8:14] == 0).all()


def test_rgb_grid_keeps_channels_and_default_layout():
    colours = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, 1], [0, 0, 0]])
    images = colours[:, :, None, None].expand(5, 3, 2, 2)
    grid = image_grid(images, padding=0)
    assert grid.shape == (2 * 2, 3 * 2, 3)  # ceil(sqrt(5)) = 3 per row, 2 rows; the empty cell is the grey ground
    assert grid[0, 0].tolist() == [255, 0, 0] and grid[0, 2].tolist() == [0, 255, 0]
    assert grid[2, 2].tolist() == [128, 128, 128] and grid[3, 5].tolist() == [128, 128, 128]
    with pytest.raises(ValueError, match="C in"):
        image_grid(torch.zeros(2, 2, 4, 4))


def test_tiny_images_are_upscaled_when_logged(tmp_path):
    assert [upscale_factor(size, size) for size in (8, 28, 32, 64, 256)] == [8, 2, 2, 1, 1]
    with RunLogger(tmp_path, mode="none") as logger:
        path = logger.log_images("samples", torch.zeros(4, 1, 8, 8), step=3, nrow=4)
    with Image.open(path) as png:
        assert png.size == (2 + 4 * (64 + 2), 2 + 64 + 2)  # 2-pixel grey gutters
        assert np.asarray(png)[0, 0] == 128
