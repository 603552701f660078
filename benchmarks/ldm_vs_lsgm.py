"""LSGM against Latent Diffusion (KL and VQ first stages) and a pixel DDPM on digits, at one training-time budget.

    python benchmarks/ldm_vs_lsgm.py --lsgm RUN... --ldm RUN... --ldm-vq RUN... --ddpm RUN... [--out DIR]
    python benchmarks/ldm_vs_lsgm.py --ldm RUN --ablation NO_GAN_RUN      # rFD with and without the patch-GAN

Per row (a model group, one run folder per training seed; mean ± std over the seeds):
- test NLL: `lsgm.evaluate.test_nll` of the whole test split (LSGM: k = `--nll-k` importance samples with the ODE
  likelihood of the latents, rtol = atol = 1e-5; DDPM: its variational bound, 1000 network calls per image), bits/dim,
  read from the run's own final evaluation when that covered the whole split with as many importance samples; an
  LDM has none (its decoder is not a likelihood);
- rFD / RMSE: digits-FD between the reconstructions D(E(x)) of the test split (posterior means, the decoder's mean,
  on the data's grid) and the test split itself, and their RMSE in [−1, 1] units (DDPM: no encoder);
- digits-FD of `--num-samples` samples against the test split at 10 / 20 / 50 NFE (DPM-Solver++(2M), NFE = steps)
  and 1000 NFE (DDPM ancestral sampling on the T = 1000 chain), sampling seed = the run's training seed;
- train time: the run's steps per phase divided by that phase's rate, measured here, side by side for every group
  (`--rate-steps` steps of each phase after 5 warm-up steps, one process at a time, `--threads` threads), so
  the budget is compared at one machine's speed even when the runs trained concurrently.
`--ablation RUN...` adds the rFD / RMSE of first stages trained without the adversarial terms
(`autoencoder.loss.disc_factor=0`), against the `--ldm` runs' (with them).

Every run's measurements are kept in --out/runs/ and reused by a later call with the same --out and
--num-samples, so the slow part can run in several processes (`--skip-rates`, a group each) and one last call,
on an otherwise idle machine, measures the rates and writes the table. Writes ldm_vs_lsgm.md / .json into --out
and prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

import lsgm
from lsgm.data import load_dataset
from lsgm.evaluate import test_nll
from lsgm.metrics.quality import sample_quality
from lsgm.sample import draw
from lsgm.train import Trainer

GROUPS = {"lsgm": "LSGM joint", "ldm": "LDM KL, f = 2", "ldm_vq": "LDM VQ, f = 2", "ddpm": "pixel DDPM"}
SAMPLERS = {10: ("dpm2m", {"steps": 10}), 20: ("dpm2m", {"steps": 20}), 50: ("dpm2m", {"steps": 50}),
            1000: ("ddpm", {})}


def checkpoint_of(folder: Path) -> Path:
    for name in ("best.pt", "last.pt"):
        if (folder / "checkpoints" / name).is_file():
            return folder / "checkpoints" / name
    raise SystemExit(f"ldm_vs_lsgm: error: {folder} has no checkpoints/best.pt or last.pt")


def own_final_nll(folder: Path, model, k: int) -> float | None:
    """The run's own final test NLL (metrics.jsonl) when it covered the whole test split with at least k importance
    samples (DDPM's bound draws none), else None."""
    final = model.config.train.final_eval
    if final.get("max_images") is not None or (model.kind != "ddpm" and final.get("k", 1) < k):
        return None
    found = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if "test_bpd" in line]
    return found[-1]["test_bpd"] if found else None


def test_bits_per_dim(folder: Path, model, x_test: torch.Tensor, k: int, seed: int) -> float | None:
    """The model's test NLL bound in bits/dim (None for a model without a likelihood)."""
    if not model.has_likelihood:
        return None
    own = own_final_nll(folder, model, k)
    if own is not None:
        return own
    torch.manual_seed(seed)
    return test_nll(model, x_test, k=k, batch_size=360, rtol=1e-5, atol=1e-5).bpd


@torch.no_grad()
def reconstruction_columns(model, x: torch.Tensor) -> dict:
    """rFD and RMSE of the test split's reconstructions (None for a model without an encoder)."""
    if model.kind not in ("lsgm", "ldm"):
        return {"rfd": None, "rmse": None}
    images = model.to_data_grid(model.decode(model.encode(x, mean=True), mean=True)).clamp(-1, 1)
    return {"rfd": sample_quality(images)["digits_fd"], "rmse": (images - x).pow(2).mean().sqrt().item()}


def phase_steps(config) -> dict:
    """Steps per training phase of a run config: the first stage's and the score model's."""
    first = config.train.stage1_steps
    return {"first": first, "second": config.train.steps - first}


def measure_rates(config, steps: int) -> dict:
    """Steps per second of each phase of a run config, `steps` timed steps after 5 warm-up steps."""
    overrides = OmegaConf.create({"logger": {"mode": "none"}, "train": {
        "steps": 2 * (steps + 5), "stage1_steps": (steps + 5) if config.train.stage1_steps else 0,
        "eval_every": 10**9, "sample_every": 10**9, "checkpoint_every": 10**9, "resume": None}})
    cfg = OmegaConf.merge(config, overrides)
    rates = {}
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(cfg, folder)
        try:
            for phase in ("first", "second") if config.train.stage1_steps else ("second",):
                for index in range(steps + 5):
                    if index == 5:
                        start = time.perf_counter()
                    batch = next(trainer.stream)
                    trainer.train_step(batch.x.contiguous(memory_format=trainer.memory_format), batch.y)
                rates[phase] = steps / (time.perf_counter() - start)
        finally:
            trainer.close()
    return rates


def cached(out: Path, folder: Path, num_samples: int, nfes: list[int], x_test: torch.Tensor, k: int | None) -> dict:
    """`measure_run`'s row of a run folder, completed with the `nfes` columns it lacks; kept in --out/runs/ (a row
    measured with another --num-samples is measured anew)."""
    path = out / "runs" / (str(folder.resolve()).strip("/").replace("/", "__") + ".json")
    row = json.loads(path.read_text()) if path.is_file() else None
    if row is not None and row.get("num_samples") == num_samples and all(f"fd_{n}" in row for n in nfes):
        return row
    row = measure_run(folder, num_samples, nfes, x_test, k,
                      row if row is not None and row.get("num_samples") == num_samples else None)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=1))
    return row


def measure_run(folder: Path, num_samples: int, nfes: list[int], x_test: torch.Tensor, k: int | None,
                row: dict | None) -> dict:
    """The run's test NLL, reconstruction columns and digits-FD at each of `nfes` missing from `row`."""
    model = lsgm.load(checkpoint_of(folder))
    seed = int(model.config.seed)
    if row is None:
        row = {"run": str(folder), "seed": seed, "kind": model.kind, "num_samples": num_samples,
               "test_bpd": None if k is None else test_bits_per_dim(folder, model, x_test, k, seed),
               **reconstruction_columns(model, x_test)}
    for nfe in nfes:
        if f"fd_{nfe}" in row:
            continue
        sampler, options = SAMPLERS[nfe]
        start = time.perf_counter()
        images, _ = draw(model, num_samples, sampler, options, batch_size=num_samples, seed=seed)
        row[f"fd_{nfe}"] = sample_quality(images)["digits_fd"]
        print(f"  {folder.name}: {nfe} NFE digits-FD {row[f'fd_{nfe}']:.2f} ({time.perf_counter() - start:.0f} s)",
              file=sys.stderr, flush=True)
    return row


def spread(values: list) -> str:
    """mean ± std over the seeds; a value measured on fewer seeds than the row has says on how many."""
    measured = [v for v in values if v is not None]
    if not measured:
        return "—"
    text = (f"{measured[0]:.4g}" if len(measured) == 1
            else f"{statistics.mean(measured):.4g} ± {statistics.stdev(measured):.2g}")
    return text if len(measured) == len(values) else f"{text} ({len(measured)} seed{'s' * (len(measured) > 1)})"


def table(groups: dict, rates: dict) -> str:
    lines = ["| model | seeds | test NLL (bits/dim) | rFD / RMSE of reconstructions | digits-FD at 10 / 20 / 50 / "
             "1000 NFE | train time (s, at the rates below) |", "|---|---:|---|---|---|---:|"]
    for group, rows in groups.items():
        seconds = rates[group]["train_seconds"]
        fd = " / ".join(spread([row.get(f"fd_{nfe}") for row in rows]) for nfe in SAMPLERS)
        recon = "—" if rows[0]["rfd"] is None else (f"{spread([r['rfd'] for r in rows])} / "
                                                     f"{spread([r['rmse'] for r in rows])}")
        lines.append(f"| {GROUPS[group]} | {len(rows)} | {spread([r['test_bpd'] for r in rows])} | {recon} | {fd} | "
                     f"{seconds:.0f} |")
    lines.append("")
    lines.append("| model | first-stage steps at steps/s | second-stage steps at steps/s |")
    lines.append("|---|---|---|")
    for group in groups:
        rate = rates[group]
        first = (f"{rate['steps']['first']} at {rate['rates']['first']:.2f}" if rate["steps"]["first"] else "—")
        lines.append(f"| {GROUPS[group]} | {first} | {rate['steps']['second']} at {rate['rates']['second']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for group in GROUPS:
        parser.add_argument(f"--{group.replace('_', '-')}", nargs="+", type=Path, default=[], metavar="RUN")
    parser.add_argument("--ablation", nargs="+", type=Path, default=[], metavar="RUN",
                        help="first stages trained with autoencoder.loss.disc_factor=0")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--nfe", type=int, nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS),
                        help="the digits-FD columns to measure (a later call can add the others)")
    parser.add_argument("--rate-steps", type=int, default=40)
    parser.add_argument("--nll-k", type=int, default=4)
    parser.add_argument("--no-nll", nargs="*", default=[], choices=list(GROUPS), metavar="GROUP",
                        help="groups whose NLL is not measured (a DDPM's bound costs T network calls an image)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-rates", action="store_true", help="measure the runs only (no table)")
    parser.add_argument("--out", type=Path, default=Path("."))
    arguments = parser.parse_args(argv)
    torch.set_num_threads(arguments.threads)
    x_test = load_dataset("digits", split="test").x
    groups, rates = {}, {}
    for group in GROUPS:
        folders = getattr(arguments, group)
        if not folders:
            continue
        k = None if group in arguments.no_nll else arguments.nll_k
        groups[group] = [cached(arguments.out, folder, arguments.num_samples, arguments.nfe, x_test, k)
                         for folder in folders]
        if arguments.skip_rates:
            continue
        config = lsgm.load(checkpoint_of(folders[0])).config
        rate = measure_rates(config, arguments.rate_steps)
        steps = phase_steps(config)
        seconds = sum(steps[phase] / rate[phase] for phase in rate)
        rates[group] = {"rates": {"first": None, **rate}, "steps": steps, "train_seconds": seconds}
        print(f"{GROUPS[group]}: {steps} steps at {rate} steps/s: {seconds:.0f} s", file=sys.stderr, flush=True)
    if arguments.skip_rates:
        return
    text = table(groups, rates)
    if arguments.ablation:
        with_gan = [reconstruction_columns(lsgm.load(checkpoint_of(f)), x_test) for f in arguments.ldm]
        without = [reconstruction_columns(lsgm.load(checkpoint_of(f)), x_test) for f in arguments.ablation]
        text += ("\n\n| first stage | runs | rFD | RMSE |\n|---|---:|---:|---:|\n" + "\n".join(
            f"| {name} | {len(rows)} | {spread([r['rfd'] for r in rows])} | {spread([r['rmse'] for r in rows])} |"
            for name, rows in (("L1 + perceptual + patch-GAN", with_gan), ("L1 + perceptual", without))))
    arguments.out.mkdir(parents=True, exist_ok=True)
    (arguments.out / "ldm_vs_lsgm.md").write_text(text + "\n")
    (arguments.out / "ldm_vs_lsgm.json").write_text(json.dumps({"groups": groups, "rates": rates}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
