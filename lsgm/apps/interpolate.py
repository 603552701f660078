"""Interpolation between images through a model's diffusion, stochastic (DDPM §4.4) or by the ODE; and the command

    python -m lsgm.apps.interpolate ckpt=PATH [t_fractions=[0,0.25,0.5,0.75,1]] [lambdas=[0,0.125,...,1]]
        [pairs=2] [method=ddpm] [seed=0] [out=interp.png] [device=auto] [split=test]

which interpolates `pairs` pairs of images of the checkpoint's dataset split (a number of pairs drawn with the
seed, or a list of index pairs [[i,j],...]) and writes a PNG grid with one row per pair and t = f·T, f in
`t_fractions` (one row per pair for method=ode), whose columns are the source x_0, one image per λ, and x'_0.
The arguments are hydra overrides of configs/interpolate.yaml, which holds the defaults above (`lsgm.cli`;
`--help` prints it).

DDPM (Ho et al. 2020, §4.4): encode both sources to step t of the chain with the same noise ε,
x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε and x'_t = √ᾱ_t x'_0 + √(1 − ᾱ_t) ε, mix x̄_t = (1 − λ) x_t + λ x'_t, and decode x̄_t
to x̄_0 by the ancestral chain from step t. Small t keeps the sources (t = 0 is the plain mixture), large t
forgets them (at t = T they only set the starting noise). An LSGM does this on the latents of the images
(posterior means) and decodes at the end. The deterministic variant (`interpolate_ode`, method=ode) encodes the
sources by the probability-flow ODE to z_1, interpolates spherically and decodes by the ODE.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lsgm import cli as lsgm_cli
from lsgm.cli import UsageError
from lsgm.cli import run as run_command
from lsgm.data import SPLITS
from lsgm.images import save_image_grid, upscale_factor
from sde.likelihood import ode_decode, ode_encode
from sde.sampling import CountedModel

from . import cli
from .chain import Chain, model_chain, reverse_step, seeded

METHODS = ("ddpm", "ode")


def lambda_weights(lambdas, x: torch.Tensor) -> torch.Tensor:
    """λ's as a (L, 1, …) tensor that broadcasts against a batch like x (B, …) to (L, B, …)."""
    weights = torch.as_tensor(lambdas, dtype=x.dtype, device=x.device).flatten()
    if weights.numel() == 0:
        raise ValueError("give at least one λ")
    return weights.reshape(-1, *([1] * x.dim()))


def check_pair(x0: torch.Tensor, x1: torch.Tensor) -> None:
    if x0.dim() != 4 or x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must be batches of the same shape (B, C, H, W), got {tuple(x0.shape)} and "
                         f"{tuple(x1.shape)}")


def to_images(model, z: torch.Tensor) -> torch.Tensor:
    """(L, B, …) latents decoded to images on the data grid, returned as (B, L, C, H, W)."""
    images = model.to_data_grid(model.decode(z.flatten(0, 1), mean=True))
    return images.unflatten(0, z.shape[:2]).transpose(0, 1)


@torch.no_grad()
def reverse_from(eps_fn, chain: Chain, x: torch.Tensor, start: int, clip_x0=None) -> tuple[torch.Tensor, int]:
    """DDPM's ancestral chain (Algorithm 2) from step `start` down to 0 on groups x (L, B, …) that share each
    step's noise z (B, …), so that the L members of a group differ only by where they start. Returns (x_0, NFE)."""
    model = CountedModel(eps_fn)
    flat = x.flatten(0, 1)
    for k in range(start, 0, -1):
        noise = torch.randn_like(x[0]).expand_as(x).flatten(0, 1)
        flat = reverse_step(chain.schedule, chain.eps(model, flat, k), flat, k, noise, clip_x0)
    flat, nfe = model.finish(flat, 0.0)
    return flat.unflatten(0, x.shape[:2]), nfe


@torch.no_grad()
def interpolate(model, x0: torch.Tensor, x1: torch.Tensor, t: int, lambdas, seed: int | None = None) -> torch.Tensor:
    """Images (B, L, C, H, W): for each pair (x0[b], x1[b]) one image per λ by DDPM's interpolation at step t of
    the model's chain (module docstring; `chain.model_chain`, T = 1000 for a continuous model), t in 0..T.

    The noise ε that encodes a pair and the noise of every reverse step are shared by all λ's; t = 0 returns
    the mixture itself, so that λ = 0 and λ = 1 give back x0 and x1 (exactly in pixel space for images on the data
    grid; their VAE reconstructions in an LSGM).
    """
    check_pair(x0, x1)
    chain = model_chain(model)
    if not isinstance(t, int) or not 0 <= t <= chain.T:
        raise ValueError(f"t must be an integer step of the model's chain, 0..{chain.T}; got {t!r}")
    weights = lambda_weights(lambdas, x0)
    with seeded(seed):
        z0, z1 = model.encode(x0, mean=True), model.encode(x1, mean=True)
        if t > 0:
            noise = torch.randn_like(z0)
            z0, z1 = chain.schedule.q_sample(z0, t, noise), chain.schedule.q_sample(z1, t, noise)
        z, _ = reverse_from(model.eps_fn(), chain, (1 - weights) * z0 + weights * z1, t, model.x0_range())
        return to_images(model, z)


def slerp(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation (Shoemake 1985) (sin((1 − λ)θ) a + sin(λθ) b)/sin θ, cos θ = ⟨a, b⟩/(‖a‖‖b‖), per
    pair of a, b (B, …) and λ in weights (L, 1, …); linear where θ ≈ 0. Returns (L, B, …)."""
    cos = (a * b).flatten(1).sum(1) / (a.flatten(1).norm(dim=1) * b.flatten(1).norm(dim=1)).clamp(min=1e-12)
    theta = cos.clamp(-1, 1).acos().reshape(-1, *([1] * (a.dim() - 1)))
    sin = theta.sin()
    spherical = (torch.sin((1 - weights) * theta) * a + torch.sin(weights * theta) * b) / sin.clamp(min=1e-12)
    return torch.where(sin > 1e-6, spherical, (1 - weights) * a + weights * b)


@torch.no_grad()
def interpolate_ode(model, x0: torch.Tensor, x1: torch.Tensor, lambdas, **ode_options) -> torch.Tensor:
    """Images (B, L, C, H, W): the sources encoded by the probability-flow ODE to z_1 (`sde.likelihood.ode_encode`,
    in an LSGM from their latents), interpolated by `slerp`, and decoded by the ODE (`ode_decode`);
    `ode_options` (method, rtol, atol, t_eps, steps) go to both. Deterministic."""
    check_pair(x0, x1)
    eps_fn = model.eps_fn()
    encoded, _ = ode_encode(eps_fn, model.sde, model.encode(torch.cat([x0, x1]), mean=True), **ode_options)
    z1_0, z1_1 = encoded.chunk(2)
    mixed = slerp(z1_0, z1_1, lambda_weights(lambdas, x0))
    z, _ = ode_decode(eps_fn, model.sde, mixed.flatten(0, 1), **ode_options)
    return to_images(model, z.unflatten(0, mixed.shape[:2]))


# --- the command ------------------------------------------------------------------------------------------------
CONFIG = "interpolate"  # configs/interpolate.yaml: the command's keys and defaults


def choose_pairs(images: torch.Tensor, pairs, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, x1): `pairs` pairs drawn without repetition with the seed, or the given index pairs [[i, j], …]
    (checked by `check_pairs`)."""
    if isinstance(pairs, int):
        if 2 * pairs > len(images):
            raise UsageError(f"pairs must lie in 1..{len(images) // 2} for this split, got {pairs}")
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[: 2 * pairs]
        first, second = order[0::2], order[1::2]
    else:
        index = torch.as_tensor(pairs)
        if bool((index >= len(images)).any()):
            raise UsageError(f"pairs must index images 0..{len(images) - 1} of this split, got {pairs}")
        first, second = index[:, 0], index[:, 1]
    return images[first.to(images.device)], images[second.to(images.device)]


def check_pairs(pairs) -> int | list[list[int]]:
    """`pairs` as a positive count or a non-empty list of index pairs [[i, j], …] of non-negative integers."""
    if lsgm_cli.is_integer(pairs):
        return lsgm_cli.positive_integer(pairs, "pairs")
    fix = f"pairs must be a count or index pairs such as pairs=[[0,1],[2,3]], got {lsgm_cli.plain(pairs)!r}"
    index_pairs = [lsgm_cli.plain(pair) for pair in lsgm_cli.non_empty_list(pairs, "pairs", "[[0,1],[2,3]]")]
    for pair in index_pairs:
        if not isinstance(pair, list) or len(pair) != 2 or not all(lsgm_cli.is_integer(i) and i >= 0 for i in pair):
            raise UsageError(fix)
    return index_pairs


def check_arguments(cfg) -> None:
    """Every argument the model is not needed to check, before loading it."""
    lsgm_cli.path(cfg.ckpt, "ckpt")
    lsgm_cli.choice(cfg.method, METHODS, "method")
    for fraction in lsgm_cli.non_empty_list(cfg.t_fractions, "t_fractions", "[0,0.5,1]"):
        lsgm_cli.fraction(fraction, "a t_fraction")
    for weight in lsgm_cli.non_empty_list(cfg.lambdas, "lambdas", "[0,0.5,1]"):
        lsgm_cli.finite_number(weight, "a λ of lambdas")
    check_pairs(cfg.pairs)
    lsgm_cli.seed(cfg.seed)
    lsgm_cli.choice(cfg.split, SPLITS, "split")
    lsgm_cli.output_file(cfg.out, "out", (".png",))


def main(argv: list[str] | None = None) -> Path:
    """Run the command (module docstring); returns the PNG's path."""
    return run_command(run, CONFIG, "lsgm.apps.interpolate", argv)


def run(cfg) -> Path:
    """Interpolate and write the grid for parsed arguments."""
    check_arguments(cfg)
    model = cli.load_model(cfg.ckpt, cfg.device)
    x0, x1 = choose_pairs(cli.dataset_images(model, cfg.split), check_pairs(cfg.pairs), cfg.seed)
    lambdas = list(cfg.lambdas)
    if cfg.method == "ode":
        rows = [interpolate_ode(model, x0, x1, lambdas)]
        labels = ["ODE + slerp"]
    else:
        T = model_chain(model).T
        steps = [round(float(fraction) * T) for fraction in cfg.t_fractions]
        rows = [interpolate(model, x0, x1, t, lambdas, cfg.seed) for t in steps]
        labels = [f"t = {t}" for t in steps]
    tiles = [torch.cat([x0[b : b + 1], row[b], x1[b : b + 1]]) for b in range(len(x0)) for row in rows]
    out = save_image_grid(torch.cat(tiles).cpu(), cfg.out, nrow=len(lambdas) + 2, scale=upscale_factor(*x0.shape[2:]))
    print(f"wrote {out}: per pair, rows {', '.join(labels)}; columns x0, λ = {lambdas}, x1")
    return out


if __name__ == "__main__":
    main()
