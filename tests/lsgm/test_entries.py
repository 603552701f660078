"""The entry points beside training: lsgm.load, python -m lsgm.sample, python -m lsgm.evaluate."""

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from lsgm import evaluate, sample
from lsgm.build import load, load_splits
from lsgm.cli import UsageError, compose


def test_load_gives_an_eval_model_with_ema_weights_that_samples_on_the_data_grid(tiny_checkpoint):
    model = load(tiny_checkpoint)
    assert not model.training
    state = torch.load(tiny_checkpoint, weights_only=False)
    name = "score_net.conv_in.weight"
    assert torch.equal(model.state_dict()[name], state["ema"]["shadow"][name])
    images, nfe = model.sample(5, sampler="heun", steps=3)
    assert images.shape == (5, 1, 8, 8) and nfe == 5
    levels = (images + 1) * 8  # 17 levels: k = (x + 1)·16/2
    assert torch.allclose(levels, levels.round(), atol=1e-5) and images.min() >= -1 and images.max() <= 1


def test_sample_command_writes_npz_and_png(tiny_checkpoint, tmp_path):
    out = tmp_path / "s.npz"
    result = subprocess.run([sys.executable, "-m", "lsgm.sample", f"ckpt={tiny_checkpoint}", "num_samples=7",
                             "sampler=ddim", "sampler.options.steps=4", f"out={out}"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "4 network evaluations" in result.stdout
    arrays = np.load(out)
    assert list(arrays.keys())[0] == "samples"
    assert arrays["samples"].shape == (7, 1, 8, 8) and arrays["samples"].dtype == np.uint8
    assert arrays["samples"].max() <= 16 and int(arrays["levels"]) == 17
    assert Image.open(out.with_suffix(".png")).size[0] > 0


def test_command_errors_are_one_line(tiny_checkpoint, tmp_path):
    with pytest.raises(UsageError, match="unknown argument samplr=ode"):
        compose(sample.CONFIG, ["ckpt=x", "samplr=ode"])
    with pytest.raises(UsageError, match=r"missing required argument\(s\): ckpt=\.\.\."):
        compose(sample.CONFIG, [])
    result = subprocess.run([sys.executable, "-m", "lsgm.sample", f"ckpt={tmp_path / 'nope.pt'}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2  # bad input (lsgm.cli.BAD_INPUT)
    assert result.stderr.strip().startswith("lsgm.sample: error: no checkpoint at")
    assert "Traceback" not in result.stderr
    result = subprocess.run([sys.executable, "-m", "lsgm.sample", f"ckpt={tiny_checkpoint}", "sampler=euler_a"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "valid" in result.stderr and "Traceback" not in result.stderr


def test_evaluate_takes_the_nll_ode_method(tiny_checkpoint, tmp_path):
    """nll.method=rk45: the command's NLL is test_nll's with rk45 (the run's own method, dopri5, when null)."""
    cfg = compose(evaluate.CONFIG, [f"ckpt={tiny_checkpoint}", f"out={tmp_path}", "logger=none", "tasks=[nll]",
                                    "max_images=6", "nll.k=1", "nll.method=rk45"])
    evaluate.main(cfg)
    nll = json.loads((tmp_path / "nll.json").read_text())
    model = load(tiny_checkpoint)
    torch.manual_seed(cfg.seed)
    x = load_splits(model.config.data)["test"].x[:6]
    options = {key: value for key, value in evaluate.nll_settings(model, {}).items() if key in ("rtol", "atol")}
    direct = evaluate.test_nll(model, x, k=1, method="rk45", **options)
    assert nll["nll_bits_per_dim"] == pytest.approx(direct.bpd, rel=1e-5) and nll["nll_nfe"] == direct.nfe


def test_evaluate_writes_every_table_and_plot(tiny_checkpoint, tmp_path, monkeypatch):
    """Every task's JSON and plots; the rate-distortion, NLL and quality tables as CSVs and, in the offline wandb run
    (job_type "eval"), as wandb.Tables."""
    import wandb

    monkeypatch.setenv("WANDB_SILENT", "true")
    runs, init = [], wandb.init
    monkeypatch.setattr(wandb, "init", lambda **kwargs: runs.append(kwargs) or init(**kwargs))
    cfg = compose(evaluate.CONFIG, [f"ckpt={tiny_checkpoint}", f"out={tmp_path}", "logger.mode=offline",
                                    "max_images=12", "nll.k=2", "nll.rtol=1e-3", "nll.atol=1e-3", "bound.num_steps=24",
                                    "bound.progressive_images=3", "quality.num_samples=32", "sampler=heun",
                                    "sampler.options.steps=3"])
    summary = evaluate.main(cfg)
    for name in ("nll.json", "bound.json", "quality.json", "samples.npz", "summary.json"):
        assert (tmp_path / name).is_file(), name
    nll = json.loads((tmp_path / "nll.json").read_text())
    assert nll["nll_images"] == 12
    # the command's NLL is test_nll of the first 12 test images with k = 2 under the command's seed
    model = load(tiny_checkpoint)
    torch.manual_seed(cfg.seed)
    direct = evaluate.test_nll(model, load_splits(model.config.data)["test"].x[:12], k=2, rtol=1e-3, atol=1e-3)
    assert nll["nll_bits_per_dim"] == pytest.approx(direct.bpd, rel=1e-5)
    bound = json.loads((tmp_path / "bound.json").read_text())
    assert bound["total_bits_per_dim"] > 0
    rows = (tmp_path / "tables" / "rate_distortion.csv").read_text().splitlines()
    assert rows[0] == "step,reverse_steps,rate_bits_per_dim,distortion_rmse,term_bits_per_dim" and len(rows) == 1 + 24
    rows = (tmp_path / "tables" / "nll.csv").read_text().splitlines()
    assert rows[0] == "nll_bits_per_dim,nll_bits_per_dim_stderr,nll_nfe,nll_images" and len(rows) == 2
    rows = (tmp_path / "tables" / "quality.csv").read_text().splitlines()
    assert {"digits_fd", "sampler", "sampler_nfe", "num_samples"} <= set(rows[0].split(",")) and len(rows) == 2
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    tables = {path.name.rsplit("_", 2)[0] for path in (run / "files" / "media" / "table").glob("*.table.json")}
    assert tables == {"rate_distortion", "nll", "quality"}
    assert [run["job_type"] for run in runs] == ["eval"]
    assert Image.open(tmp_path / "bound_terms.png").size == (800, 500)
    assert Image.open(tmp_path / "rate_distortion.png").size == (1200, 400)
    # progressive grid: 3 images (rows) × (the original + 5 steps) (columns), 8x8 images upscaled 8x, 1 px padding
    # 3 images (rows) × 5 steps in coding order and the original (columns), a tile each and a strip of labels
    assert Image.open(tmp_path / "progressive.png").size == (6 * 80, 3 * 80 + 24)
    quality = json.loads((tmp_path / "quality.json").read_text())
    assert quality["num_samples"] == 32 and quality["digits_fd"] > 0
    assert summary["nll_bits_per_dim"] == nll["nll_bits_per_dim"]


def test_sample_draw_is_reproducible(tiny_checkpoint):
    model = load(tiny_checkpoint)
    a, _ = sample.draw(model, 4, "ddim", {"steps": 5, "eta": 1.0}, seed=3)
    b, _ = sample.draw(model, 4, "ddim", {"steps": 5, "eta": 1.0}, seed=3)
    c, _ = sample.draw(model, 4, "ddim", {"steps": 5, "eta": 1.0}, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_a_ddpm_test_nll_is_its_variational_bound(tmp_path):
    """A discrete chain's NLL is DDPM's bound L_T + Σ L_t + L_0 (one network call per step), not an ODE."""
    from hydra import compose, initialize_config_dir

    from lsgm.train import Trainer
    from sde import vlb

    from .conftest import CONFIG_DIR, TINY

    pixel = [o for o in TINY if not o.startswith(("vae.", "sampler", "train.stage1_steps"))]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[*pixel, "experiment=digits_ddpm", "score.discrete_steps=100",
                                           "score.net.channel_mult=[1]", "score.net.attn_resolutions=[]"])
    trainer = Trainer(cfg, tmp_path)
    trainer.fit()
    trainer.close()
    model = load(tmp_path / "checkpoints" / "best.pt")
    assert model.kind == "ddpm" and model.schedule.T == 100
    x = trainer.data["test"].x[:6]
    torch.manual_seed(0)
    result = evaluate.test_nll(model, x)
    assert result.nfe == 100  # one network call per step of the chain (an ODE's count would be adaptive)
    # DDPM's bound drawn with other noise (seeds 1..4) has the same mean within its Monte-Carlo spread
    bounds = []
    for seed in (1, 2, 3, 4):
        torch.manual_seed(seed)
        bounds.append(vlb.variational_bound(model.discrete_eps_fn(model.schedule), model.schedule, x,
                                            model.levels).total)
    bounds = torch.stack(bounds)
    difference = (result.nats.double() - bounds.mean(0)).mean()
    spread = math.sqrt(bounds.var(0).mean() * (1 + 1 / len(bounds)) / x.shape[0])
    assert abs(difference) < 5 * spread, (difference, spread)


def test_evaluate_takes_the_runs_own_nll_settings_unless_given(tiny_checkpoint):
    """nll.k / rtol / atol / method left null are the training run's train.final_eval (so `lsgm.evaluate`
    reproduces the NLL its run reported); given ones win; a config without final_eval gets k = 4, 1e-5 and dopri5."""
    model = load(tiny_checkpoint)
    final = model.config.train.final_eval
    unset = {"k": None, "rtol": None, "atol": None, "method": None, "repeats": 1}
    assert evaluate.nll_settings(model, unset) == {"k": final.k, "rtol": final.ode.rtol, "atol": final.ode.atol,
                                                   "method": "dopri5", "repeats": 1}
    given = evaluate.nll_settings(model, {**unset, "k": 7, "atol": 0.5})
    assert (given["k"], given["rtol"], given["atol"]) == (7, final.ode.rtol, 0.5)
    bare = SimpleNamespace(config=OmegaConf.create({"train": {}}))
    assert evaluate.nll_settings(bare, unset) == {"k": 4, "rtol": 1e-5, "atol": 1e-5, "method": "dopri5",
                                                  "repeats": 1}
