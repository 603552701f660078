"""Training infrastructure: exact resume, atomic checkpoints, clear errors, hydra presets and sweeps."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lsgm.build import build_model, load
from lsgm.checkpoint import CheckpointError, load_checkpoint
from lsgm.evaluate import validation_bound
from lsgm.train import Trainer

from .conftest import CONFIG_DIR, TINY, tiny_config

ROOT = Path(__file__).resolve().parents[2]


def train(cfg, run_dir, stop_at=None):
    trainer = Trainer(cfg, run_dir)
    if stop_at is not None:
        step = trainer.train_step

        def step_then_maybe_stop(x, y=None):
            record = step(x, y)
            trainer.stop_requested = trainer.progress.step == stop_at
            return record

        trainer.train_step = step_then_maybe_stop
    trainer.fit()
    trainer.close()
    return trainer


def test_resume_continues_the_same_trajectory(tmp_path):
    """20 steps straight == 10 steps, a stop (checkpoint), a new process-like Trainer resuming, 10 more."""
    cfg = tiny_config("train.steps=20", "train.stage1_steps=6", "train.eval_every=5")
    straight = train(cfg, tmp_path / "straight")
    train(cfg, tmp_path / "resumed", stop_at=10)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["step"] == 10
    resumed = train(cfg, tmp_path / "resumed")
    assert resumed.progress.step == 20
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6, rtol=0), name
    for name, a in straight.ema.shadow.items():
        assert torch.allclose(a, resumed.ema.shadow[name], atol=1e-6, rtol=0), name
    assert straight.progress.best_step == resumed.progress.best_step


def test_interrupted_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(), tmp_path)
    trainer.train_step(next(trainer.stream).x)
    path = trainer.save("last.pt")

    def broken_save(obj, file, *args, **kwargs):
        with open(file, "wb") as handle:
            handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    trainer.train_step(next(trainer.stream).x)
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        trainer.save("last.pt")
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temporary file left behind
    trainer.close()


def test_the_vae_alone_trains_through_the_trainer_and_a_non_finite_step_is_skipped(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config("kind=vae", "train.steps=40"), tmp_path)
    assert trainer.model.kind == "vae" and trainer.score_parameters == [] and trainer.score_optimizer is None
    x_val = trainer.data["val"].x

    def bound():
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return validation_bound(trainer.model.eval(), x_val, "vae", repeats=1)

    before = bound()
    for _ in range(20):
        assert trainer.train_step(next(trainer.stream).x)["phase"] == "vae"
    after = bound()
    assert after < before - 0.2, (before, after)
    weights = [p.detach().clone() for p in trainer.vae_parameters]
    losses = trainer.model.losses

    def non_finite(*arguments):
        result = losses(*arguments)
        result.loss_vae = result.loss_vae * float("nan")
        return result

    monkeypatch.setattr(trainer.model, "losses", non_finite)
    trainer.train_step(next(trainer.stream).x)
    assert trainer.progress.skipped == 1 and trainer.progress.step == 21
    assert all(torch.equal(a, b) for a, b in zip(weights, trainer.vae_parameters))
    trainer.close()


def test_bad_checkpoints_raise_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not an lsgm checkpoint"):
        load(foreign)


def test_resuming_with_an_incompatible_config_is_a_clear_error(tmp_path):
    trainer = Trainer(tiny_config(), tmp_path)
    trainer.save("last.pt")
    trainer.close()
    with pytest.raises(CheckpointError, match="does not fit this model's configuration"):
        Trainer(tiny_config("score.net.channels=16"), tmp_path)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml")))
def test_every_preset_composes_and_builds(experiment):
    overrides = [f"experiment={experiment}", "data.root=/nonexistent"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    shapes = {"digits": ((1, 8, 8), 17), "mnist": ((1, 32, 32), 256), "cifar10": ((3, 32, 32), 256)}
    data_shape, levels = shapes[cfg.data.name]
    with torch.device("meta" if cfg.data.name != "digits" else "cpu"):  # GPU-sized presets: shapes only
        model = build_model(cfg, data_shape, levels, num_classes=10)
    assert model.data_shape == data_shape and model.levels == levels
    assert cfg.train.stage1_steps <= cfg.train.steps
    assert model.kind == PRESET_KINDS.get(experiment, "lsgm") == cfg.kind
    if experiment == "digits_ddpm":
        assert model.schedule.T == 1000 and model.mixing_logit is None
    if experiment in ("mnist", "cifar10"):
        assert cfg.train.amp == "bf16"


PRESET_KINDS = {"digits_vae": "vae", "digits_pixel": "pixel", "digits_class_pixel": "pixel", "digits_ddpm": "ddpm"}


@pytest.mark.parametrize("overrides, message", [
    (["score.discrete_steps=1000"], "kind=lsgm needs a continuous-time model"),
    (["sde=subvp"], "the VP-SDE for the mixed or residual score"),
    (["experiment=digits_pixel", "sde=ve", "score.mixed=false"], "an SDE with a N(0, I) prior"),
    (["experiment=digits_ddpm", "sde=subvp"], "the VP-SDE, which DDPM's chain discretises"),
    (["kind=ddpm"], "kind=ddpm needs vae=none"),
    (["experiment=digits_ddpm", "score.mixed=true"], "score.mixed: false"),
    (["experiment=digits_pixel", "train.stage1_steps=5"], "train.stage1_steps: 0"),
    (["kind=vae", "condition=class"], "no condition"),
    (["kind=gan"], "unknown kind 'gan'"),
])
def test_an_illegal_kind_and_config_is_one_clear_error(overrides, message):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    with pytest.raises(ValueError, match=re.escape(message)):
        build_model(cfg, (1, 8, 8), 17, num_classes=10)


@pytest.mark.slow  # two training subprocesses with wandb: ~25 s
def test_multirun_writes_a_folder_and_an_offline_wandb_run_per_job(tmp_path):
    overrides = [o for o in TINY if not o.startswith("logger=")]
    env = {**os.environ, "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "train_joint.py"), "-m", "train.lr_score=1e-4,3e-4", *overrides,
         f"hydra.sweep.dir={tmp_path}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for job in ("0", "1"):
        run_dir = tmp_path / job
        for name in ("config.yaml", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt"):
            assert (run_dir / name).is_file(), name
        assert list((run_dir / "samples").glob("*.png"))
        assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    groups = {OmegaConf.load(tmp_path / job / "config.yaml").logger.group for job in "01"}
    assert groups == {tmp_path.name}
    assert result.stdout.count("test NLL:") == 2


@pytest.mark.parametrize("score_in_stage1", [False, True])
def test_stage1_trains_the_score_model_only_when_asked(tmp_path, score_in_stage1):
    """During stage 1 the VAE always learns; the score model learns its (detached) latents only with the option."""
    trainer = Trainer(tiny_config(f"train.score_in_stage1={score_in_stage1}"), tmp_path)
    score_before = [p.detach().clone() for p in trainer.score_parameters]
    vae_before = [p.detach().clone() for p in trainer.vae_parameters]
    record = trainer.train_step(next(trainer.stream).x)
    trainer.close()
    assert record["phase"] == "vae"
    assert any(not torch.equal(a, b) for a, b in zip(vae_before, trainer.vae_parameters))
    score_moved = any(not torch.equal(a, b) for a, b in zip(score_before, trainer.score_parameters))
    assert score_moved == score_in_stage1
    assert ("loss_score" in record) == score_in_stage1


def test_a_pixel_model_trains_on_the_sub_vp_sde(tmp_path):
    """sde=subvp is one config group away: the pixel SGM builds on it, validates with uniform time sampling (the
    importance-sampled schemes are VP-only) and its denoising loss falls from the untrained network's D = 64."""
    pixel = [o for o in TINY if not o.startswith(("vae.", "train.stage1_steps"))]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[*pixel, "experiment=digits_pixel", "sde=subvp", "score.mixed=false",
                                           "train.scheme_p=drop_all_uniform", "train.steps=60",
                                           "train.batch_size=64", "score.net.channel_mult=[1]",
                                           "score.net.attn_resolutions=[]", "train.lr_score=3e-3"])
    trainer = Trainer(cfg, tmp_path)
    assert trainer.model.kind == "pixel" and type(trainer.model.sde).__name__ == "SubVPSDE"
    assert trainer.model.likelihood_scheme == "ll_uniform"
    losses = [trainer.train_step(next(trainer.stream).x)["loss_score"].item() for _ in range(60)]
    assert sum(losses[:5]) / 5 == pytest.approx(64, rel=0.15)  # ε̂ = 0 at the start: E‖ε‖² = D
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:5]) / 5, losses
    trainer.progress.step = 60
    assert 0 < trainer.validation_bpd() < 10
    trainer.close()
