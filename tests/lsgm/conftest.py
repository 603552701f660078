"""Tiny LSGM runs shared by the training, entry-point and application tests."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")

TINY = [
    "logger=none",
    "train.steps=8",
    "train.stage1_steps=3",
    "train.batch_size=16",
    "train.eval_every=1000",
    "train.sample_every=1000",
    "train.checkpoint_every=1000",
    "train.num_samples=4",
    "train.final_eval.k=1",
    "train.final_eval.max_images=8",
    "train.final_eval.batch_size=8",
    "train.final_eval.ode.rtol=1e-3",
    "train.final_eval.ode.atol=1e-3",
    "vae.params.channels=8",
    "vae.params.num_scales=1",
    "vae.params.groups_per_scale=1",
    "vae.params.latent_channels=2",
    "score.net.channels=8",
    "score.net.num_res_blocks=1",
    "sampler=heun",
    "sampler.options.steps=3",
]


def tiny_config(*overrides: str):
    """The digits config shrunk to seconds of CPU, with `overrides` on top."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=[*TINY, *overrides])


def train(cfg, run_dir, stop_at=None, close: bool = True):
    """A Trainer of `cfg` in `run_dir` after `fit()`, stopped as by a signal after step `stop_at`; closed (its run
    folder released) unless `close=False`, e.g. to run its final evaluation first."""
    from lsgm.train import Trainer

    trainer = Trainer(cfg, run_dir)
    if stop_at is not None:
        step = trainer.train_step

        def step_then_maybe_stop(x, y=None):
            record = step(x, y)
            trainer.stop_requested = trainer.progress.step == stop_at
            return record

        trainer.train_step = step_then_maybe_stop
    trainer.fit()
    if close:
        trainer.close()
    return trainer


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A trained-for-8-steps LSGM checkpoint on digits (best.pt of a tiny run)."""
    from lsgm.train import Trainer

    run_dir = tmp_path_factory.mktemp("tiny_run")
    trainer = Trainer(tiny_config(), run_dir)
    trainer.fit()
    trainer.close()
    return run_dir / "checkpoints" / "best.pt"
