"""Train LSGM (or its special cases: the VAE alone, a pixel-space SGM, DDPM) from the hydra configs.

    python train_joint.py                                  # digits, CPU, a few minutes
    python train_joint.py experiment=mnist data.root=/data/mnist
    python train_joint.py -m train.lr_score=1e-4,3e-4      # a sweep: one run folder each, one wandb group
    torchrun --nproc_per_node=4 train_joint.py experiment=cifar10 data.root=/data/cifar10

Each run folder holds config.yaml, metrics.jsonl, checkpoints/{last,best}.pt, samples/*.png and,
unless logger=none, wandb/ (offline by default).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from lsgm.train import Trainer


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.mode == RunMode.MULTIRUN and cfg.logger.group is None:
        with open_dict(cfg):
            cfg.logger.group = Path(hydra_cfg.sweep.dir).name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    trainer = Trainer(cfg, run_dir)
    try:
        trainer.fit()
        if trainer.stop_requested:
            return None
        summary = trainer.final_evaluation()
    finally:
        trainer.close()
    if summary:
        print(f"test NLL: {summary['test_bpd']:.4f} ± {summary['test_bpd_stderr']:.4f} bits/dim "
              f"({summary['test_nll_nfe']} ODE function evaluations)")
        print(f"samples: {summary['samples']}")
        print(f"run folder: {run_dir}")
        return summary["test_bpd"]
    return None


if __name__ == "__main__":
    main()
