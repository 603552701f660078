"""LSGM joint vs the VAE alone under the same training budget, compared image by image on the test split.

    python benchmarks/joint_vs_vae.py --train --seeds 0 1 2 --out /tmp/joint_vs_vae   # train both per seed, compare
    python benchmarks/joint_vs_vae.py vae=digits_flat --train                          # hydra overrides go to both
    python benchmarks/joint_vs_vae.py --runs VAE_RUN LSGM_RUN ...                      # compare finished runs

`--train` runs `train_joint.py` per seed with the same data and step budget: `experiment=digits` (LSGM: VAE-alone
stage 1, then joint) and `experiment=digits_vae` (the VAE alone for every step), side by side, one thread each. Each
run's best checkpoint (by validation bound) is scored on the same test images with the same importance sample
count k: the ODE bound for LSGM, the IWAE bound for the VAE. Both bounds are per image, so each seed's difference
comes with its paired standard error over images; across seeds the mean difference comes with the spread of the
per-seed differences, which also carries the training noise (seed to seed, ~0.005 bits/dim here).

Measured (2 shared CPU cores, 2200 steps, k = 4, test bits/dim):
    hierarchical digits VAE   seed 0: VAE 1.7864, LSGM 1.7823;  seed 1: 1.7797, 1.7792;  seed 2: 1.7802, 1.7832;
                              LSGM − VAE −0.0005 ± 0.0021 over the seeds (a tie: the score model learns nothing there)
    vae=digits_flat           seed 0: VAE 1.9405, LSGM 1.8435 (−0.097: the score prior fills the N(0, I) prior's hole)
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import torch

import lsgm
from lsgm.build import load_splits
from lsgm.evaluate import test_nll

ROOT = Path(__file__).resolve().parent.parent
PRESETS = {"vae_alone": "digits_vae", "lsgm_joint": "digits"}


def train(out: Path, steps: int, seed: int, extra: list[str]) -> list[Path]:
    """The VAE alone and LSGM at the same budget and seed, run in parallel (one thread each); their run folders."""
    jobs, runs = [], []
    for name, experiment in PRESETS.items():
        run = out / f"{name}_seed{seed}"
        command = [sys.executable, str(ROOT / "train_joint.py"), f"experiment={experiment}", f"seed={seed}",
                   f"train.steps={steps}", "logger=none", "threads=1", f"hydra.run.dir={run}", *extra]
        log = open(out / f"{run.name}.log", "w")
        jobs.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log, run))
        runs.append(run)
    for job, log, run in jobs:
        if job.wait():
            raise SystemExit(f"training {run.name} failed: see {log.name}")
        log.close()
    return runs


def per_image_nats(run: Path, k: int, seed: int) -> tuple[torch.Tensor, int]:
    """Test NLL bound per image (nats) of a run's best checkpoint, and the data dimension."""
    checkpoint = run / "checkpoints" / "best.pt"
    model = lsgm.load(checkpoint if checkpoint.exists() else run / "checkpoints" / "last.pt")
    x = load_splits(model.config.data)["test"].x
    torch.manual_seed(seed)
    result = test_nll(model, x, k=k, batch_size=len(x))
    return result.nats.double(), result.dims


def compare(runs: list[Path], k: int, seed: int) -> list[dict]:
    """Each run's test bits/dim ± its standard error, and its paired difference to the first run ± paired error."""
    rows, reference = [], None
    for run in runs:
        nats, dims = per_image_nats(run, k, seed)
        to_bpd = 1.0 / (dims * math.log(2))
        row = {"run": str(run), "bpd": nats.mean().item() * to_bpd,
               "bpd_stderr": nats.std().item() / math.sqrt(len(nats)) * to_bpd}
        if reference is None:
            reference = nats
        else:
            difference = nats - reference
            row["minus_first_bpd"] = difference.mean().item() * to_bpd
            row["minus_first_stderr"] = difference.std().item() / math.sqrt(len(nats)) * to_bpd
        rows.append(row)
    return rows


def print_rows(rows: list[dict]) -> None:
    for row in rows:
        paired = (f"   minus first: {row['minus_first_bpd']:+.4f} ± {row['minus_first_stderr']:.4f} (paired)"
                  if "minus_first_bpd" in row else "")
        print(f"{row['run']}: {row['bpd']:.4f} ± {row['bpd_stderr']:.4f} bits/dim{paired}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="*", type=Path, help="finished run folders (the first is the reference)")
    parser.add_argument("--train", action="store_true", help="train the VAE alone and LSGM joint first")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds (--train)")
    parser.add_argument("--steps", type=int, default=2200, help="optimizer steps of each run (--train)")
    parser.add_argument("--out", type=Path, default=Path("joint_vs_vae"), help="folder for the runs (--train)")
    parser.add_argument("--k", type=int, default=4, help="importance samples per test image")
    parser.add_argument("overrides", nargs="*", help="hydra overrides passed to both trainings (--train)")
    args = parser.parse_args()
    if args.train == bool(args.runs):
        parser.error("give either --train or --runs")
    if not args.train:
        torch.set_num_threads(1)
        print_rows(compare(args.runs, args.k, seed=0))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:
        rows = compare(train(args.out, args.steps, seed, args.overrides), args.k, seed)
        print_rows(rows)
        results.append(rows)
    differences = torch.tensor([rows[1]["minus_first_bpd"] for rows in results], dtype=torch.float64)
    if len(differences) > 1:
        spread = differences.std().item() / math.sqrt(len(differences))
        print(f"LSGM joint minus VAE alone over {len(differences)} seeds: {differences.mean().item():+.4f} ± "
              f"{spread:.4f} bits/dim")
    (args.out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
