"""Train LSGM (or its special cases: the VAE alone, a pixel-space SGM, DDPM) from the hydra configs: the command
`lsgm-train` (installed) or `python train_joint.py` (in a clone), the same hydra app.

    lsgm-train                                             # digits, CPU, a few minutes
    lsgm-train debug=default                               # a smoke run in well under a minute
    lsgm-train experiment=mnist data.root=/data/mnist
    lsgm-train -m train.lr_score=1e-4,3e-4                 # a sweep: one run folder each, one wandb group
    torchrun --nproc_per_node=4 train_joint.py experiment=cifar10 data.root=/data/cifar10

The configs are `lsgm.config_dir()`: the clone's configs/, or the copy installed with the package. Each run folder
holds config.yaml, metrics.jsonl, checkpoints/{last,best}.pt, samples/*.png and, unless logger=none, wandb/ (offline
by default). One run at a time owns a folder (`lsgm.run_lock`).

Exit codes: 0 finished; 2 bad input (a config that cannot run, one line saying what to change); 3 the run
diverged (it stopped, its last good checkpoint kept); 4 interrupted by SIGINT/SIGTERM (checkpoint written:
run the same command again to resume); 5 the run folder is in use by another run. The value returned to a
hydra sweeper is the best validation bound (bits/dim), never a test-split number.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from .checkpoint import CheckpointError
from .cli import BAD_INPUT, DIVERGED, INTERRUPTED
from .guard import TrainingDiverged
from .paths import config_dir
from .run_lock import RunFolderBusy
from .train import Trainer

BUSY = 5  # the commands' other exit codes are lsgm.cli's


def fail(code: int, message: str) -> None:
    """Print `program: error: message` (program: train_joint.py or lsgm-train, as invoked) and exit with `code`."""
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    sys.exit(code)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Train, evaluate on the test split and return the best validation bound (module docstring)."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.mode == RunMode.MULTIRUN:  # a sweep: one wandb group, dated; runs named by their overrides
        sweep = Path(hydra_cfg.sweep.dir)
        with open_dict(cfg):
            cfg.logger.group = cfg.logger.group or f"{sweep.parent.name}_{sweep.name}"
            cfg.logger.name = cfg.logger.name or hydra_cfg.job.override_dirname or run_dir.name
    try:
        trainer = Trainer(cfg, run_dir)
    except RunFolderBusy as error:
        fail(BUSY, str(error))
    except (ValueError, CheckpointError) as error:
        fail(BAD_INPUT, str(error))
    try:
        trainer.fit()
        if trainer.stop_requested:
            fail(INTERRUPTED, f"interrupted at step {trainer.progress.step}; run the same command to resume")
        summary = trainer.final_evaluation()
    except TrainingDiverged as error:
        fail(DIVERGED, str(error))
    finally:
        trainer.close()
    if summary:
        if "test_bpd" in summary:
            print(f"test NLL: {summary['test_bpd']:.4f} ± {summary['test_bpd_stderr']:.4f} bits/dim "
                  f"({summary['test_nll_nfe']} ODE function evaluations)")
        else:  # no likelihood (kind=ldm)
            print(f"test reconstruction RMSE: {summary['test_rmse']:.4f} ± {summary['test_rmse_stderr']:.4f} "
                  "([−1, 1] units; this model has no likelihood)")
        print(f"samples: {summary['samples']}")
        print(f"run folder: {run_dir}")
        return summary["best_val_bpd"]
    return None
