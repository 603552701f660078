"""How the test NLL's estimate depends on the ODE tolerance, the Hutchinson probes and k, and what each costs.

    python benchmarks/nll_tolerance.py CKPT [--images 120] [--tolerances 1e-3 1e-4 1e-5] [--probes 1 4] [--k 1 4]
        [--methods dopri5 rk45] [--reference-tolerance 1e-6] [--reference-probes 8] [--seed 0] [--threads 2]
        [--out DIR]

CKPT is a model with a likelihood (LSGM, a pixel SGM). Every row scores the same first `--images` test images with
`lsgm.evaluate.test_nll` under one setting — the ODE method (`--methods`; the reference's is dopri5), rtol = atol =
the tolerance, the mean of `probes` Hutchinson integrations (Rademacher probes), k importance samples — from the same
seed, so all rows of one k share their posterior draws and differ only by the ODE's error and the probes' noise.

For each k the reference row is the tightest setting (`--reference-tolerance`, `--reference-probes`). A row's
columns: its mean bits/dim; `Δ` = its mean minus the reference's, paired per image, ± the standard error of that
mean difference over the images (what the setting adds to a test NLL: ODE bias plus probe noise, the reference's
own noise included); `spread`, the standard deviation of the per-image differences (one image's error); the NFE of
one solve (its batch: all the images × k × probes, as `ode_log_likelihood` stacks the probes); and the wall time
per image. k changes the bound itself (a larger k is tighter), so rows of different k are compared through their
own references only.

Writes nll_tolerance.csv and nll_tolerance.md into `--out` (default: <run folder>/eval).

Measured: see the README, "Performance".
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import torch

import lsgm
from lsgm.build import load_splits
from lsgm.evaluate import test_nll
from sde.solvers import ADAPTIVE_ODE_METHODS

COLUMNS = ("k", "method", "tolerance", "probes", "bits_per_dim", "delta", "delta_stderr", "delta_spread", "nfe",
           "seconds_per_image", "reference")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--images", type=int, default=120, help="the first N test images")
    parser.add_argument("--tolerances", type=float, nargs="+", default=[1e-3, 1e-4, 1e-5])
    parser.add_argument("--probes", type=int, nargs="+", default=[1, 4], help="Hutchinson integrations averaged")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 4], help="importance samples")
    parser.add_argument("--methods", nargs="+", default=["dopri5"], choices=ADAPTIVE_ODE_METHODS,
                        help="adaptive ODE methods of the rows (the reference's is dopri5)")
    parser.add_argument("--reference-tolerance", type=float, default=1e-6)
    parser.add_argument("--reference-probes", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="default: <run folder>/eval")
    arguments = parser.parse_args(argv)
    if arguments.images < 2 or min(arguments.probes + arguments.k + [arguments.reference_probes]) < 1:
        parser.error("--images must be at least 2, and --probes, --k, --reference-probes at least 1")
    if min(arguments.tolerances + [arguments.reference_tolerance]) <= 0:
        parser.error("tolerances must be positive")
    return arguments


def measure(model, x: torch.Tensor, k: int, method: str, tolerance: float, probes: int,
            seed: int) -> tuple[torch.Tensor, int, float]:
    """Per-image bits/dim, the NFE of one solve and the seconds per image of one setting, from `seed`."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    result = test_nll(model, x, k=k, batch_size=len(x), progress=False, method=method, rtol=tolerance, atol=tolerance,
                      repeats=probes)
    seconds = time.perf_counter() - start
    return result.nats / (result.dims * math.log(2)), result.nfe, seconds / len(x)


def row(k: int, method: str, tolerance: float, probes: int, bits: torch.Tensor, reference: torch.Tensor, nfe: int,
        seconds: float, is_reference: bool) -> dict:
    difference = (bits - reference).double()
    return {"k": k, "method": method, "tolerance": tolerance, "probes": probes,
            "bits_per_dim": bits.double().mean().item(),
            "delta": difference.mean().item(), "delta_stderr": (difference.std() / math.sqrt(len(bits))).item(),
            "delta_spread": difference.std().item(), "nfe": nfe, "seconds_per_image": seconds,
            "reference": is_reference}


def sweep(model, x: torch.Tensor, arguments: argparse.Namespace) -> list[dict]:
    """The reference and every tolerance × probes setting, for each k."""
    rows = []
    for k in arguments.k:
        reference = measure(model, x, k, "dopri5", arguments.reference_tolerance, arguments.reference_probes,
                            arguments.seed)
        rows.append(row(k, "dopri5", arguments.reference_tolerance, arguments.reference_probes, reference[0],
                        reference[0], *reference[1:], True))
        print(markdown(rows[-1]), flush=True)
        for method in arguments.methods:
            for tolerance in arguments.tolerances:
                for probes in arguments.probes:
                    bits, nfe, seconds = measure(model, x, k, method, tolerance, probes, arguments.seed)
                    rows.append(row(k, method, tolerance, probes, bits, reference[0], nfe, seconds, False))
                    print(markdown(rows[-1]), flush=True)
    return rows


def markdown(entry: dict) -> str:
    delta = "reference" if entry["reference"] else f"{entry['delta']:+.1e} ± {entry['delta_stderr']:.1e}"
    return (f"| {entry['k']} | {entry['method']} | {entry['tolerance']:.0e} | {entry['probes']} "
            f"| {entry['bits_per_dim']:.4f} | {delta} "
            f"| {entry['delta_spread']:.1e} | {entry['nfe']} | {entry['seconds_per_image'] * 1e3:.1f} |")


def write(rows: list[dict], out: Path, header: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "nll_tolerance.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    table = ["| k | method | rtol = atol | probes | bits/dim | Δ vs reference | spread | NFE | ms / image |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|", *map(markdown, rows)]
    (out / "nll_tolerance.md").write_text(header + "\n\n" + "\n".join(table) + "\n")


def main(argv: list[str] | None = None) -> list[dict]:
    arguments = parse_arguments(argv)
    torch.set_num_threads(arguments.threads)
    model = lsgm.load(arguments.checkpoint)
    if not model.has_likelihood:
        raise SystemExit(f"nll_tolerance: error: a {model.kind} model has no likelihood")
    x = load_splits(model.config.data)["test"].x[: arguments.images]
    header = (f"{arguments.checkpoint}: the first {len(x)} test images, seed {arguments.seed}, "
              f"{arguments.threads} thread(s)")
    print(header)
    rows = sweep(model, x, arguments)
    write(rows, arguments.out or arguments.checkpoint.resolve().parent.parent / "eval", header)
    return rows


if __name__ == "__main__":
    main()
