"""Training infrastructure: exact resume, atomic checkpoints, clear errors, hydra presets and sweeps."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lsgm.build import build_model, load
from lsgm.checkpoint import CheckpointError, load_checkpoint
from lsgm.evaluate import validation_bound
from lsgm.guard import TrainingDiverged
from lsgm.run_lock import RunFolderBusy
from lsgm.train import Trainer

from .conftest import CONFIG_DIR, TINY, tiny_config, train

ROOT = Path(__file__).resolve().parents[2]


def scale_loss(monkeypatch, trainer, name: str, factor: float):
    """Make the trainer's model return one of its losses ("loss_vae" or "loss_score") times `factor` (e.g. NaN, a
    spike); returns the model's own `losses`, to restore."""
    losses = trainer.model.losses

    def scaled(*arguments):
        result = losses(*arguments)
        setattr(result, name, getattr(result, name) * factor)
        return result

    monkeypatch.setattr(trainer.model, "losses", scaled)
    return losses


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_resume_continues_the_same_trajectory(tmp_path, micro_batches):
    """20 steps straight == 10 steps, a stop (checkpoint), a new process-like Trainer resuming, 10 more; with two
    micro-batches a step too (their noise streams are in the checkpoint)."""
    cfg = tiny_config("train.steps=20", "train.stage1_steps=6", "train.eval_every=5",
                      f"train.accumulate={micro_batches}")
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


def test_a_checkpoint_resumes_only_with_its_number_of_micro_batches(tmp_path):
    train(tiny_config("train.steps=4", "train.accumulate=2"), tmp_path, stop_at=2)
    with pytest.raises(CheckpointError, match="written with train.accumulate=2 and this run has 1"):
        Trainer(tiny_config("train.steps=4", "train.accumulate=1"), tmp_path)


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
    scale_loss(monkeypatch, trainer, "loss_vae", float("nan"))
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


def folder_state(run_dir: Path) -> dict:
    """Every file of a run folder with its bytes."""
    return {p.relative_to(run_dir): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_an_incompatible_restart_changes_no_file_and_a_compatible_one_appends_its_record(tmp_path, caplog):
    trainer = Trainer(tiny_config(), tmp_path)
    trainer.train_step(next(trainer.stream).x)
    trainer.save("last.pt")
    trainer.close()
    before = folder_state(tmp_path)
    with pytest.raises(CheckpointError, match="does not fit this model's configuration"):
        Trainer(tiny_config("score.net.channels=16"), tmp_path)
    assert folder_state(tmp_path) == before
    resumed = Trainer(tiny_config("train.lr_score=5e-4"), tmp_path)
    resumed.close()
    assert "differs from config.yaml in train.lr_score" in caplog.text
    assert (tmp_path / "config.yaml").read_bytes() == before[Path("config.yaml")]
    assert "lr_score: 0.0005" in (tmp_path / "config.resumed-1.yaml").read_text()


def test_a_second_run_in_a_live_run_folder_fails_at_once_and_a_stale_lock_is_taken_over(tmp_path):
    first = Trainer(tiny_config(), tmp_path)
    before = folder_state(tmp_path)
    with pytest.raises(RunFolderBusy, match=f"in use by pid {os.getpid()}"):
        Trainer(tiny_config("seed=1"), tmp_path)
    assert folder_state(tmp_path) == before  # the second run wrote nothing
    first.fit()
    first.close()
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 8 and not (tmp_path / ".lock").exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": 0.0}))
    Trainer(tiny_config(), tmp_path).close()  # the dead owner's lock is taken over (and released)
    assert not (tmp_path / ".lock").exists()


def test_an_exploding_learning_rate_is_undone_then_stops_the_run_and_its_checkpoint_stays_clean(tmp_path):
    """lr_vae = 1e6: every VAE update is larger than the weights, undone, and after max_skipped_steps the run stops;
    the checkpoint written before holds the good weights, and unhealthy weights are never written."""
    trainer = Trainer(tiny_config("train.lr_vae=1e6", "train.max_skipped_steps=4", "train.warmup_fraction=0"),
                      tmp_path)
    trainer.save("last.pt")
    good = [p.detach().clone() for p in trainer.vae_parameters]
    with pytest.raises(TrainingDiverged, match="4 steps in a row up to step 4"):
        trainer.fit()
    assert all(torch.equal(a, b) for a, b in zip(good, trainer.vae_parameters))  # every update undone
    assert trainer.progress.skipped == 4
    with torch.no_grad():
        trainer.vae_parameters[0].fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="not writing"):
        trainer.save("last.pt")
    trainer.close()
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["step"] == 0 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_a_non_finite_score_loss_skips_only_the_score_update(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config("train.stage1_steps=0"), tmp_path)
    vae_before = [p.detach().clone() for p in trainer.vae_parameters]
    score_before = [p.detach().clone() for p in trainer.score_parameters]
    scale_loss(monkeypatch, trainer, "loss_score", float("nan"))
    record = trainer.train_step(next(trainer.stream).x)
    trainer.close()
    assert record["phase"] == "joint" and trainer.progress.skipped == 1
    assert any(not torch.equal(a, b) for a, b in zip(vae_before, trainer.vae_parameters))
    assert all(torch.equal(a, b) for a, b in zip(score_before, trainer.score_parameters))


@pytest.mark.parametrize("clip", [1e-3, 1e6])
def test_the_optimizers_see_gradients_clipped_to_grad_clip(tmp_path, monkeypatch, clip):
    """Each part's gradients reach its optimizer scaled to norm grad_clip where their norm (the logged grad_norm_*)
    exceeds it, and untouched where not."""
    trainer = Trainer(tiny_config("train.stage1_steps=0", f"train.grad_clip={clip}"), tmp_path)
    seen = {}
    guarded_step = trainer._guarded_step

    def recording(optimizer):
        name = "vae" if optimizer is trainer.vae_optimizer else "score"
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        seen[name] = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
        return guarded_step(optimizer)

    monkeypatch.setattr(trainer, "_guarded_step", recording)
    record = trainer.train_step(next(trainer.stream).x)
    trainer.close()
    for name in ("vae", "score"):
        norm = float(record[f"grad_norm_{name}"])
        assert norm > 1e-2
        assert seen[name] == pytest.approx(min(norm, clip), rel=1e-4)


@pytest.mark.parametrize("override, message", [
    ("train.steps=0", "train.steps must be a positive integer, got 0"),
    ("train.steps=-5", "train.steps must be a positive integer, got -5"),
    ("train.batch_size=0", "train.batch_size must be a positive integer"),
    ("train.batch_size=-4", "train.batch_size must be a positive integer"),
    ("train.checkpoint_every=0", "train.checkpoint_every must be a positive integer"),
    ("train.log_every=0", "train.log_every must be a positive integer"),
    ("train.stage1_steps=9", "train.stage1_steps must be an integer in 0..train.steps (8)"),
    ("train.lr_vae=nan", "train.lr_vae must be a positive number"),
    ("train.score_target=posterior", "train.score_target must be one of ['noise', 'posterior_mixture']"),
])
def test_bad_training_numbers_are_refused_before_any_work(tmp_path, override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Trainer(tiny_config(override), tmp_path)
    assert not any(tmp_path.iterdir())


def test_train_joint_refuses_bad_input_with_exit_code_2(tmp_path):
    command = [sys.executable, str(ROOT / "train_joint.py"), *TINY, f"hydra.run.dir={tmp_path}"]
    bad = subprocess.run([*command, "train.steps=0"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "train_joint.py: error: train.steps must be a positive integer, got 0"
    assert not (tmp_path / "config.yaml").exists()


@pytest.mark.slow  # a training subprocess stopped by SIGTERM: ~30 s
def test_an_interrupted_train_joint_exits_4_with_a_checkpoint(tmp_path):
    command = [sys.executable, str(ROOT / "train_joint.py"), *TINY, f"hydra.run.dir={tmp_path}"]
    run = subprocess.Popen([*command, "train.steps=100000", "train.log_every=1"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.exists() and metrics.stat().st_size) and time.time() < deadline and run.poll() is None:
        time.sleep(0.2)
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=240) == 4
    assert "interrupted at step" in run.stderr.read()
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] > 0


def test_a_resumed_run_does_not_repeat_the_steps_a_crash_logged(tmp_path):
    cfg = tiny_config("train.log_every=1")
    train(cfg, tmp_path, stop_at=4)
    with open(tmp_path / "metrics.jsonl", "a") as stream:  # a crash after step 4's checkpoint logged steps 5-6
        stream.write(json.dumps({"step": 5, "loss_vae": 1.0}) + "\n" + json.dumps({"step": 6}) + "\n{\"step\": 7")
    train(cfg, tmp_path)
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [step for step in steps if step <= 8]
    assert logged == sorted(logged) and len([s for s in steps if s == 5]) == 1


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml")))
def test_every_preset_composes_and_builds(experiment):
    overrides = [f"experiment={experiment}", "data.root=/nonexistent"]
    if experiment.startswith("cifar10_ldm"):  # LPIPS reads its weights from a local file; shapes only here
        overrides.append("autoencoder.loss.perceptual=null")
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
    if model.kind == "ldm":
        assert model.autoencoder.regularizer == ("vq" if experiment.endswith("_vq") else "kl")
        assert model.latent_shape[1] * 2 == data_shape[1]  # f = 2
        assert (model.condition is not None) == ("class" in experiment)


PRESET_KINDS = {"digits_vae": "vae", "digits_pixel": "pixel", "digits_class_pixel": "pixel", "digits_ddpm": "ddpm",
                "digits_ldm": "ldm", "digits_ldm_vq": "ldm", "digits_class_ldm": "ldm", "cifar10_ldm": "ldm",
                "cifar10_ldm_vq": "ldm"}


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
    (["kind=ldm"], "kind=ldm needs an autoencoder"),
    (["experiment=digits_ldm", "vae=digits"], "vae=none (the first stage is the autoencoder)"),
    (["experiment=digits_ldm", "train.score_in_stage1=true"], "train.score_in_stage1: false"),
    (["experiment=digits_ldm", "train.stage1_steps=0"], "or train.first_stage"),
    (["experiment=digits_pixel", "train.score_target=posterior_mixture"], "train.score_target: noise"),
    (["autoencoder=digits_kl"], "kind=lsgm needs autoencoder: null"),
    (["experiment=digits_ldm", "autoencoder.loss.perceptual=vgg"], "unknown perceptual loss 'vgg'"),
    (["experiment=cifar10_ldm", "data=digits", "autoencoder.loss.perceptual_path=null"],
     "needs autoencoder.loss.perceptual_path"),
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
    loggers = [OmegaConf.load(tmp_path / job / "config.yaml").logger for job in "01"]
    assert {logger.group for logger in loggers} == {f"{tmp_path.parent.name}_{tmp_path.name}"}
    assert ["train.lr_score=0.0001" in loggers[0].name, "train.lr_score=0.0003" in loggers[1].name] == [True, True]
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


def test_bf16_autocast_on_cpu_matches_float32_and_keeps_float32_weights(tmp_path):
    """train.amp=bf16 runs the convolutions and matmuls in bfloat16 (8 significant bits: unit round-off 2⁻⁸ ≈ 0.4%
    per operation); the joint loss of one batch stays within 1% of float32's (measured 0.06%), the weights, their
    gradients' updates and the checkpoint stay float32."""
    trainer = Trainer(tiny_config("train.stage1_steps=0", "train.amp=bf16"), tmp_path)
    x = next(trainer.stream).x
    trainer.model.eval()
    losses = {}
    for amp in (False, True):
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            result = trainer.model.losses("joint", x, trainer.loss_options(x, None, 1.0))
        losses[amp] = (result.loss_vae.item(), result.loss_score.item())
    for float32, bfloat16 in zip(losses[False], losses[True]):
        assert bfloat16 == pytest.approx(float32, rel=1e-2)
    record = trainer.train_step(x)
    assert trainer.progress.skipped == 0 and record["loss_score"].dtype == torch.float32
    path = trainer.save("last.pt")
    trainer.close()
    state = load_checkpoint(path)
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())


@pytest.mark.slow  # inductor compiles the tiny networks: about a minute on 2 cores
def test_compiled_networks_match_eager_ones(tmp_path, monkeypatch):
    """The compiled score network and VAE give eager's outputs (the VAE's posterior draws too: inductor is told to
    draw its random numbers as eager does, which it otherwise does with its own generator)."""
    import torch._inductor.config

    from lsgm.train import compile_networks

    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)

    trainer = Trainer(tiny_config("train.stage1_steps=0"), tmp_path)
    x = next(trainer.stream).x
    trainer.model.eval()
    z, t = torch.randn(4, *trainer.model.latent_shape), torch.rand(4)
    torch.manual_seed(0)
    eager = (trainer.model.score_net(z, t), trainer.model.vae(x).dist.mean())
    names = list(trainer.model.state_dict())
    compile_networks(trainer.model)
    torch.manual_seed(0)
    compiled = (trainer.model.score_net(z, t), trainer.model.vae(x).dist.mean())
    trainer.close()
    assert list(trainer.model.state_dict()) == names  # checkpoints keep their keys
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


def test_the_slurm_launcher_preset_composes_into_submitit():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra.utils import get_class

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                           "experiment=cifar10"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert get_class(launcher._target_).__name__ == "SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", 1, 1)
    assert launcher.signal_delay_s > 0 and launcher.max_num_timeout > 0  # SIGUSR1 saves; the requeue resumes


def test_sigusr1_saves_stops_and_hands_over_to_the_previous_handler(tmp_path):
    """SLURM (submitit) sends SIGUSR1 before the time limit: the trainer saves last.pt at the end of the step, stops,
    then calls the handler it displaced (submitit's, which requeues the job)."""
    called = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: called.append(signum))
    try:
        trainer = Trainer(tiny_config("train.steps=50"), tmp_path)
        step = trainer.train_step

        def step_then_signal(x, y=None):
            record = step(x, y)
            if trainer.progress.step == 3:
                os.kill(os.getpid(), signal.SIGUSR1)
            return record

        trainer.train_step = step_then_signal
        trainer.fit()
        trainer.close()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert called == [signal.SIGUSR1] and load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 3


def test_a_resumed_run_continues_its_wandb_run_with_prefixed_metrics(tmp_path, monkeypatch):
    """The wandb id is kept in the checkpoint: the resumed run's offline files carry the same id. Metrics go out as
    train/..., val/bpd and test/bpd."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny_config("logger=wandb", "train.log_every=2", "train.eval_every=2")
    train(cfg, tmp_path, stop_at=4)
    stored = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["wandb_id"]
    train(cfg, tmp_path)
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    # offline-run-<date>_<time>-<id>, with "-1" appended by wandb when both runs start within the same second
    ids = {re.fullmatch(r"offline-run-\d{8}_\d{6}-([^-]+)(-\d+)?", run.name).group(1) for run in runs}
    assert len(runs) == 2 and ids == {stored}, [run.name for run in runs]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*records) - {"step", "time", "elapsed"}
    assert {"train/loss_vae", "train/images_per_second", "val/bpd"} <= keys
    assert all(key.startswith(("train/", "val/", "test/")) for key in keys), keys


def test_the_wandb_sweep_command_line_composes_into_a_valid_config():
    """What `wandb agent` runs for sweeps/digits_lr.yaml: train_joint.py with each parameter as key=value (a hydra
    override), one point of every range; the config composes and builds its model."""
    import yaml

    sweep = yaml.safe_load((ROOT / "sweeps" / "digits_lr.yaml").read_text())
    assert sweep["program"] == "train_joint.py" and "${args_no_hyphens}" in sweep["command"]
    assert sweep["metric"] == {"name": "val/bpd", "goal": "minimize"}
    point = {key: spec["values"][-1] if "values" in spec else spec["max"] for key, spec in sweep["parameters"].items()}
    extra = [part for part in sweep["command"] if not part.startswith("${")]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"{key}={value}" for key, value in point.items()] + extra)
    assert cfg.train.lr_score == point["train.lr_score"] and cfg.logger.mode == "online"
    assert build_model(cfg, (1, 8, 8), 17).kind == "lsgm"


@pytest.mark.parametrize("experiment, stage1", [("digits", 10), ("digits_ddpm", 0), ("digits_vae", 0)])
def test_the_debug_preset_shrinks_any_preset_to_a_smoke_run(experiment, stage1):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={experiment}", "debug=default"])
    assert (cfg.train.steps, cfg.train.stage1_steps, cfg.logger.mode) == (20, stage1, "none")
    assert cfg.sampler.name == "heun" and cfg.train.final_eval.max_images == 16
    assert build_model(cfg, (1, 8, 8), 17, num_classes=10).kind == cfg.kind


def test_a_finite_loss_spike_skips_its_update(tmp_path, monkeypatch):
    """After a few steps each part's running loss is known; a finite VAE loss 100× above it is skipped (the score
    model's update, whose loss is normal, is kept), and the next normal step trains again."""
    trainer = Trainer(tiny_config("train.stage1_steps=0", "train.max_loss_ratio=10"), tmp_path)
    for _ in range(3):
        trainer.train_step(next(trainer.stream).x)
    assert set(trainer.progress.loss_scale) == {"vae", "score"} and trainer.progress.skipped == 0
    vae_before = [p.detach().clone() for p in trainer.vae_parameters]
    score_before = [p.detach().clone() for p in trainer.score_parameters]
    losses = scale_loss(monkeypatch, trainer, "loss_vae", 100.0)
    trainer.train_step(next(trainer.stream).x)
    assert trainer.progress.skipped == 1
    assert all(torch.equal(a, b) for a, b in zip(vae_before, trainer.vae_parameters))
    assert any(not torch.equal(a, b) for a, b in zip(score_before, trainer.score_parameters))
    monkeypatch.setattr(trainer.model, "losses", losses)
    trainer.train_step(next(trainer.stream).x)
    assert trainer.progress.skipped == 1 and trainer.progress.skipped_in_a_row == 0
    trainer.close()
