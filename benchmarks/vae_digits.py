"""The VAE alone on sklearn digits (8x8, 17 levels), trained by lsgm's one trainer (`train_joint.py
experiment=digits_vae`, one thread), and its test NLL (IWAE, k = 100) in bits/dim beside two baselines fitted in
this script: a uniform model (log2 17 bits/dim) and independent per-pixel categoricals.

    python benchmarks/vae_digits.py [--steps 2878] [--batch-size 32] [--out results.json] [hydra overrides ...]

Data: lsgm.data's digits split (train 1293, val 144 for the best checkpoint, test 360); the baselines are
fitted on the whole training partition (train + val). The default budget, 2878 steps of 32 images, is what 10
minutes bought the VAE on 2 shared CPU cores at one thread. The run folder (--run) holds the trainer's
config.yaml, metrics.jsonl, checkpoints and summary.json; a finished run is evaluated again without training.

Measured: the baselines, uniform 4.087 and independent 2.431 bits/dim. The VAE through the trainer is not measured
yet at this budget; nvae's former loop of its own (a 143-image validation split) gave test IWAE-100 1.770.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

import lsgm
from lsgm.build import load_splits
from lsgm.data import load_dataset, to_levels
from lsgm.evaluate import test_nll

ROOT = Path(__file__).resolve().parent.parent
LEVELS = 17


def independent_categorical_bpd(train: torch.Tensor, test: torch.Tensor, pseudocount: float = 1.0) -> float:
    """Test bits/dim of per-pixel categoricals fitted on train with add-``pseudocount`` smoothing:
    p_i(k) = (n_ik + a) / (N + a * levels)."""
    k_train, k_test = to_levels(train, LEVELS).flatten(1), to_levels(test, LEVELS).flatten(1)
    counts = torch.stack([(k_train == k).sum(0) for k in range(LEVELS)], dim=1).double() + pseudocount
    log_p = torch.log(counts / counts.sum(1, keepdim=True))
    nats = -log_p.gather(1, k_test.T).T.sum(1)
    return (nats.mean() / (k_test.shape[1] * math.log(2))).item()


def train(run: Path, args: argparse.Namespace) -> float:
    """Train (or resume) the VAE alone with `train_joint.py` into `run`; its final evaluation on the best
    checkpoint is the test IWAE bound with k = args.k. Returns the wall time in seconds."""
    command = [sys.executable, str(ROOT / "train_joint.py"), "experiment=digits_vae", f"seed={args.seed}",
               f"train.steps={args.steps}", f"train.batch_size={args.batch_size}", f"train.final_eval.k={args.k}",
               "logger=none", f"threads={args.threads}", f"hydra.run.dir={run}", *args.overrides]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def elbo_bpd(model, x: torch.Tensor, seed: int) -> float:
    """The single-sample bound (k = 1, the ELBO) of x in bits/dim, under a fixed seed."""
    torch.manual_seed(seed)
    return test_nll(model, x, k=1, batch_size=len(x)).bpd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2878, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--k", type=int, default=100, help="importance samples for the test NLL")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is robust on a shared CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run", type=Path, default=Path("outputs/vae_digits"), help="the run folder")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("overrides", nargs="*", help="hydra overrides for train_joint.py, e.g. vae.params.channels=16")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    train_seconds = train(args.run, args)
    summary = json.loads((args.run / "summary.json").read_text())
    model = lsgm.load(summary["checkpoint"])
    splits = load_splits(model.config.data)
    partition = load_dataset("digits", split="train", val_fraction=0.0).x
    results = {
        "uniform_bpd": math.log2(LEVELS),
        "independent_categorical_test_bpd": independent_categorical_bpd(partition, splits["test"].x),
        "vae_test_iwae_bpd": summary["test_bpd"],
        "vae_test_iwae_stderr": summary["test_bpd_stderr"],
        "iwae_k": args.k,
        "vae_test_elbo_bpd": elbo_bpd(model, splits["test"].x, args.seed),
        "vae_train_elbo_bpd": elbo_bpd(model, splits["train"].x, args.seed),
        "best_step": summary["best_step"],
        "skipped_steps": summary["skipped_steps"],
        "steps": args.steps,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "train_and_evaluation_seconds": train_seconds,
        "parameters": sum(p.numel() for p in model.vae.parameters()),
        "run": str(args.run),
    }
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
