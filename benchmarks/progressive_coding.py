"""Progressive coding through the latents: the rate–distortion table of a trained model's diffusion chain.

    python benchmarks/progressive_coding.py CKPT [CKPT ...] [--num-steps 60] [--max-images 360] [--seed 0]

DDPM's progressive coding (Ho et al. 2020, §4.3) sends x_T, then the step terms from t = T down to 1; after the
step-t term the receiver predicts x̂_0 from x_t. For an LSGM the chain runs on the score model's latents (every
group's ε, packed) of one posterior draw per image, and x̂_0 is decoded to an image (`LSGM.diffusion_bound`).
Columns per evaluated step t: rate, the bits/dim received once x_t is known (L_T plus the terms above t); distortion,
the RMSE of the decoded prediction against the image on the level scale (0..levels − 1); term, the step-t term in
bits/dim. The steps are `--num-steps` of the T = 1000 chain, spaced log-uniformly so that the low-t end, where the
detail is filled in, is resolved; each stands for its stratum in the rate.

How to read it: the distortion should keep falling as t goes down to 1 (every step carries information about the
image) until it meets its floor, the reconstruction error of the decoder from the exact latents z_0 (printed below
the table: no prediction of z_0 can decode closer to the image on average). The closing lines say at which step the
distortion comes within 1% of that floor and whether it ever rises by more than 1% of it on the way down. The rate
of a continuous latent is a density's code length, so its last term (the Gaussian decoder density at t = 1) is
negative; the bits/dim of the model are the ODE or bound figures, not this column.

Measured: see the README (section "The score prior over all of the latents").
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import lsgm
from lsgm.build import load_splits
from lsgm.checkpoint import CheckpointError

SHOWN_STEPS = (1000, 900, 700, 500, 300, 200, 100, 50, 20, 10, 5, 2, 1)


def rate_distortion_rows(checkpoint: Path, num_steps: int, max_images: int | None,
                         seed: int) -> tuple[list[dict], float]:
    """The rate–distortion rows (descending t) of a checkpoint on its test split, and the distortion floor (the RMSE
    of decoding one posterior draw of the latents, for a latent model; 0 in pixel space)."""
    try:
        model = lsgm.load(checkpoint)
    except CheckpointError as error:
        raise SystemExit(f"progressive_coding: error: {error}") from None
    x = load_splits(model.config.data)["test"].x[:max_images]
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    _, table = model.diffusion_bound(x, num_steps=num_steps, generator=generator)
    floor = 0.0
    if model.kind == "lsgm":  # the same posterior draw as the chain's: its first random numbers after the seed
        torch.manual_seed(seed)
        with torch.no_grad():
            decoded = model.decode(model.encode(x), mean=True)
        floor = ((decoded - x).double() * (model.levels - 1) / 2).pow(2).mean().sqrt().item()
    return table.rows()[::-1], floor


def shown(rows: list[dict]) -> list[dict]:
    """The rows nearest to SHOWN_STEPS (each once), descending t."""
    chosen = {min(rows, key=lambda row: abs(row["step"] - step))["step"] for step in SHOWN_STEPS}
    return [row for row in rows if row["step"] in chosen]


def largest_rise(rows: list[dict]) -> float:
    """The largest increase of the distortion from one evaluated step to the next lower one (≤ 0: never rises)."""
    distortions = [row["distortion_rmse"] for row in rows]
    return max(later - earlier for earlier, later in zip(distortions, distortions[1:]))


def step_reaching(rows: list[dict], level: float) -> int | None:
    """The highest evaluated t whose distortion is at most `level` (None if none is)."""
    return next((row["step"] for row in rows if row["distortion_rmse"] <= level), None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--num-steps", type=int, default=60, help="evaluated steps of the 1000-step chain")
    parser.add_argument("--max-images", type=int, default=None, help="first test images (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for checkpoint in args.checkpoints:
        rows, floor = rate_distortion_rows(checkpoint, args.num_steps, args.max_images, args.seed)
        print(f"\n{checkpoint}\n\n| t | rate (bits/dim) | distortion (RMSE, levels) | term (bits/dim) |")
        print("|---:|---:|---:|---:|")
        for row in shown(rows):
            print(f"| {row['step']} | {row['rate_bits_per_dim']:.4f} | {row['distortion_rmse']:.4f} | "
                  f"{row['term_bits_per_dim']:.5f} |")
        rise = largest_rise(rows)
        print(f"\nfloor (decoding the exact latents z_0): {floor:.4f}; distortion within 1% of it from t = "
              f"{step_reaching(rows, 1.01 * floor)} on; largest rise between evaluated steps {max(rise, 0.0):.4f} "
              f"({'within' if rise <= 0.01 * max(floor, 1e-12) else 'above'} 1% of the floor), over {len(rows)} "
              "evaluated steps")


if __name__ == "__main__":
    main()
