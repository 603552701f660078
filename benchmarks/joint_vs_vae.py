"""LSGM joint vs the VAE alone under the same training budget, compared image by image on the test split.

    python benchmarks/joint_vs_vae.py --train --seeds 0 1 2 --out /tmp/joint_vs_vae   # train both per seed, compare
    python benchmarks/joint_vs_vae.py --train vae=digits_single                       # hydra overrides go to both
    python benchmarks/joint_vs_vae.py --train --steps 1000                            # another budget for every run
    python benchmarks/joint_vs_vae.py --runs REFERENCE_RUN OTHER_RUN ...              # compare finished runs

`--train` runs `train_joint.py` per seed with the same data and step budget (the default preset's, unless
`--steps`), one thread each, side by side:
    vae_alone    `experiment=digits_vae`: the default preset's VAE alone, with its own learned hierarchical prior (the
                 best VAE alone on digits);
    lsgm_joint   `experiment=digits`: the same VAE with the score prior over all of its latents (stage 1, then joint).
Each run's best checkpoint (by validation bound) is scored on the same test images with the same importance sample
count k: the ODE bound for LSGM, the IWAE bound for the VAEs. Both bounds are per image, so each seed's difference
comes with its paired standard error over images; across seeds the mean difference comes with the standard error of
the per-seed differences, which also carries the training noise.

Measured (2 CPU cores, one thread per run, the default 1000-step budget, k = 4, 8 probes, test bits/dim; the
README's table), with the presets' recipe (VAE rate 4e-2, warm-ups 5% and KL 70%, 400 stage-1 steps; `--train`):
    seed 0: VAE 1.8004, LSGM 1.7962;  seed 1: 1.7955, 1.7776;  seed 2: 1.7951, 1.7898;
    LSGM − VAE −0.0092 ± 0.0044 over the seeds (with the fused AdamW and the guard's bound; before them LSGM
    1.7964 / 1.7779 / 1.7895, −0.0091 ± 0.0043); with the previous recipe (rate 3e-2 after 2%, KL 30%, 600 stage-1
    steps) VAE 1.8142 / 1.8274 / 1.8196, LSGM 1.7970 / 1.8245 / 1.8155, −0.0081 ± 0.0046; at 1e-2 (before) with four
    noise draws per latent −0.0093 ± 0.0021 (VAE 1.8666, LSGM 1.8573), with one draw −0.0020 ± 0.0023, a tie
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
PRESETS = {"vae_alone": ["experiment=digits_vae"], "lsgm_joint": ["experiment=digits"]}
PARALLEL = 2


def train(out: Path, steps: int | None, seed: int, extra: list[str]) -> list[Path]:
    """Every preset at the same budget and seed, `PARALLEL` at a time (one thread each); their run folders, in the
    order of PRESETS. A run whose folder already holds a summary is not trained again."""
    runs, pending = [], []
    budget = [f"train.steps={steps}"] if steps else []
    for name, preset in PRESETS.items():
        run = out / f"{name}_seed{seed}"
        runs.append(run)
        if not (run / "summary.json").exists():
            command = [sys.executable, str(ROOT / "train_joint.py"), *preset, f"seed={seed}", *budget, "logger=none",
                       "threads=1", f"hydra.run.dir={run}", *extra]
            pending.append((command, run))
    for start in range(0, len(pending), PARALLEL):
        jobs = []
        for command, run in pending[start:start + PARALLEL]:
            log = open(out / f"{run.name}.log", "w")
            jobs.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log, run))
        for job, log, run in jobs:
            if job.wait():
                raise SystemExit(f"training {run.name} failed: see {log.name}")
            log.close()
    return runs


def per_image_nats(run: Path, k: int, seed: int, probes: int) -> tuple[torch.Tensor, int]:
    """Test NLL bound per image (nats) of a run's best checkpoint, and the data dimension. An LSGM's latent ODE
    likelihood averages `probes` Hutchinson probes (one solve): with k > 1 the log-sum-exp of one probe's noisy
    estimate is biased low (README, "How precise the test NLL is"), at the final evaluation's tolerance 1e-3."""
    checkpoint = run / "checkpoints" / "best.pt"
    model = lsgm.load(checkpoint if checkpoint.exists() else run / "checkpoints" / "last.pt")
    x = load_splits(model.config.data)["test"].x
    torch.manual_seed(seed)
    result = test_nll(model, x, k=k, batch_size=len(x), repeats=probes, rtol=1e-3, atol=1e-3)
    return result.nats.double(), result.dims


def compare(runs: list[Path], k: int, seed: int, probes: int = 8) -> list[dict]:
    """Each run's test bits/dim ± its standard error, and its paired difference to the first run ± paired error."""
    rows, reference = [], None
    for run in runs:
        nats, dims = per_image_nats(run, k, seed, probes)
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
    parser.add_argument("--train", action="store_true", help="train the presets of PRESETS per seed first")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds (--train)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps of each run (--train; default: "
                        "the presets' own)")
    parser.add_argument("--out", type=Path, default=Path("joint_vs_vae"), help="folder for the runs (--train)")
    parser.add_argument("--k", type=int, default=4, help="importance samples per test image")
    parser.add_argument("--probes", type=int, default=8, help="Hutchinson probes of the latent ODE likelihood")
    parser.add_argument("overrides", nargs="*", help="hydra overrides passed to every training (--train)")
    args = parser.parse_args()
    if args.train == bool(args.runs):
        parser.error("give either --train or --runs")
    if not args.train:
        torch.set_num_threads(1)
        print_rows(compare(args.runs, args.k, seed=0, probes=args.probes))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:
        rows = compare(train(args.out, args.steps, seed, args.overrides), args.k, seed, args.probes)
        print_rows(rows)
        results.append(rows)
    summarise(results)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))


def mean_and_error(values: list[float]) -> str:
    """'mean ± standard error' over seeds (the mean alone for one seed)."""
    numbers = torch.tensor(values, dtype=torch.float64)
    if len(numbers) == 1:
        return f"{numbers.item():.4f}"
    return f"{numbers.mean().item():.4f} ± {numbers.std().item() / math.sqrt(len(numbers)):.4f}"


def summarise(results: list[list[dict]]) -> None:
    """A Markdown table over seeds: each preset's test bits/dim, and LSGM joint minus each other preset."""
    names = list(PRESETS)
    joint = names.index("lsgm_joint")
    print(f"\n| model | test bits/dim over {len(results)} seed(s) | LSGM joint minus it |\n|---|---|---|")
    for index, name in enumerate(names):
        bpd = [rows[index]["bpd"] for rows in results]
        gap = "" if index == joint else mean_and_error([rows[joint]["bpd"] - rows[index]["bpd"] for rows in results])
        print(f"| {name} | {mean_and_error(bpd)} | {gap} |")


if __name__ == "__main__":
    main()
