"""Time of the posterior-mixture target (`sde.gaussian.diagonal_mixture_eps`) against the size of its chunks.

    python benchmarks/mixture_target.py [--rows 256] [--components 64] [--dims 160] [--threads 1] [--repeats 20]

The target of the default job's score model: rows = batch × noise draws (64 × 4), components = the batch's
posteriors (64), dims = the latent dimensions (160). Every row is one setting of `sde.gaussian.MIXTURE_CHUNK`
(elements of one (rows, K, D) intermediate), timed alternately with the others in one process on the same inputs;
"whole batch" forms the (B, K, D) tensors at once. Prints ms per call and the speed-up over the whole batch.

Measured: see the README, "Performance".
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import sde.gaussian
from sde.gaussian import diagonal_mixture_eps

WHOLE = 2**62  # more elements than any batch: the (B, K, D) tensors at once
CHUNKS = (WHOLE, 2**14, 2**16, 2**18, 2**20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--components", type=int, default=64)
    parser.add_argument("--dims", type=int, default=160)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.rows, args.dims, generator=gen)
    mean_coeff = torch.rand(args.rows, generator=gen)
    std = (1 - mean_coeff**2).sqrt()
    means = torch.randn(args.components, args.dims, generator=gen)
    variances = 0.01 + torch.rand(args.components, args.dims, generator=gen)
    default = sde.gaussian.MIXTURE_CHUNK
    names = {chunk: "whole batch" if chunk == WHOLE
             else f"2^{chunk.bit_length() - 1}" + " (default)" * (chunk == default) for chunk in CHUNKS}
    times, outputs = {name: [] for name in names.values()}, {}
    try:
        for _ in range(args.repeats):
            for chunk, name in names.items():
                sde.gaussian.MIXTURE_CHUNK = chunk
                start = time.perf_counter()
                outputs[name] = diagonal_mixture_eps(x, mean_coeff, std, means, variances)
                times[name].append(time.perf_counter() - start)
    finally:
        sde.gaussian.MIXTURE_CHUNK = default
    whole = statistics.median(times["whole batch"])
    print(f"rows {args.rows}, components {args.components}, dims {args.dims}, {args.threads} thread(s), "
          f"median of {args.repeats}")
    print("| chunk (elements) | ms per call | speed-up over the whole batch | max |Δ| to the whole batch |")
    print("|---|---:|---:|---:|")
    for name in names.values():
        median = statistics.median(times[name])
        difference = (outputs[name] - outputs["whole batch"]).abs().max().item()
        print(f"| {name} | {1000 * median:.2f} | {whole / median:.2f} | {difference:.1e} |")


if __name__ == "__main__":
    main()
