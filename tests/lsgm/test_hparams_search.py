"""The hparams_search=digits_optuna preset: hydra-optuna-sweeper tunes train_joint.py on the validation bound."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.types import RunMode
from hydra.utils import get_class
from omegaconf import OmegaConf

from .conftest import CONFIG_DIR, TINY

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")

ROOT = Path(__file__).resolve().parents[2]
TINY_NETWORKS = [o for o in TINY if o.startswith(("vae.params.", "score.net.", "train.batch_size="))]


def test_the_optuna_preset_composes_into_a_seeded_minimising_search_over_training_keys():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["hparams_search=digits_optuna"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert get_class(sweeper._target_).__name__ == "OptunaSweeper" and cfg.hydra.mode == RunMode.MULTIRUN
    assert sweeper.direction == "minimize" and sweeper.n_trials > 1
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed is not None
    assert set(sweeper.params) == {"train.lr_score", "train.lr_vae", "score.net.dropout"}
    for key, space in sweeper.params.items():
        assert OmegaConf.select(cfg, key, default=None) is not None, key  # a key the training config has
        assert space.startswith(("interval(", "choice(", "tag(log, interval(")), space


@pytest.mark.slow  # two debug trainings of tiny networks in one optuna study: ~2 min on 2 busy cores
def test_an_optuna_sweep_minimises_the_best_validation_bound(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "train_joint.py"), "-m", "hparams_search=digits_optuna", "debug=default",
         "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1", f"hydra.sweep.dir={tmp_path}", "logger=none",
         *TINY_NETWORKS], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    optimum = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert optimum["name"] == "optuna" and set(optimum["best_params"]) == {
        "train.lr_score", "train.lr_vae", "score.net.dropout"}
    summaries = [yaml.safe_load((tmp_path / trial / "summary.json").read_text()) for trial in ("0", "1")]
    assert math.isfinite(optimum["best_value"])
    assert optimum["best_value"] == min(summary["best_val_bpd"] for summary in summaries)  # not test_bpd
    assert all(summary["test_bpd"] != summary["best_val_bpd"] for summary in summaries)
