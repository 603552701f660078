"""Inpainting by RePaint (Lugmayr et al. 2022), in pixel space or in an LSGM's latent space; and the command

    python -m lsgm.apps.inpaint ckpt=PATH [masks=[wide,narrow,half,lines,every_second,expand]] [num_images=8]
        [t_T=250] [jump_length=10] [jump_n_sample=10] [seed=0] [out=inpaint.png] [device=auto] [split=test]
        [latent_threshold=0.5] [consistency_steps=0] [samples=1] [guidance=0.0]

which inpaints the first `num_images` images of the checkpoint's dataset split under each mask (a type of
`lsgm.apps.masks` or a .png path), writes a grid of (masked input, result, original) rows per mask, and prints
and writes beside the PNG (same name, .csv) the RMSE on the unknown pixels against a baseline that fills them
with the mean image of the train split. The arguments are hydra overrides of configs/inpaint.yaml, which holds
the defaults above (`lsgm.cli`; `--help` prints it).

RePaint conditions an unconditional model on the known part x_0 (mask m = 1) by changing its reverse chain
alone. At every reverse step k → k − 1

    known    x_{k−1}^known   ~ q(x_{k−1} | x_0) = N(√ᾱ_{k−1} x_0, (1 − ᾱ_{k−1}) I)   (x_0 itself at k − 1 = 0),
    unknown  x_{k−1}^unknown ~ p_θ(x_{k−1} | x_k)                                     (the model's ancestral step),
    merged   x_{k−1} = m ⊙ x_{k−1}^known + (1 − m) ⊙ x_{k−1}^unknown,

and the two parts are harmonised by resampling: the chain repeatedly jumps back up by the forward chain
x_k = √(1 − β_k) x_{k−1} + √β_k z and denoises again (`repaint_schedule`).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch

from lsgm import cli as lsgm_cli
from lsgm.cli import UsageError
from lsgm.cli import run as run_command
from lsgm.data import SPLITS
from lsgm.images import save_image_grid, upscale_factor
from sde.sampling import CountedModel

from . import cli
from .chain import Chain, forward_step, model_chain, reverse_step, seeded
from .masks import check_mask, make_masks

CONSISTENCY_LEARNING_RATE = 0.05
LATENT_THRESHOLD = 0.5
CONSISTENCY_STEPS = 100  # Adam steps of the optional decoder consistency step, when it is asked for


def repaint_schedule(t_T: int, jump_length: int = 10, jump_n_sample: int = 10) -> list[int]:
    """The steps RePaint visits, from t_T down to 0 (its `get_schedule_jump`, in this library's numbering).

    Walk down one step at a time; on arriving at a step s ∈ {1, 1 + jump_length, 1 + 2·jump_length, …} below
    t_T − jump_length + 1, go back up by jump_length steps, jump_n_sample − 1 times in all for each s. A descending
    pair (k, k − 1) is a reverse step (one model call), an ascending one a forward step (none), so the model runs

        t_T + (jump_n_sample − 1)·jump_length·#{s}  times: 250 + 9·10·24 = 2410 for t_T = 250, jump_length = 10,
        jump_n_sample = 10 (RePaint's setting).

    RePaint labels x_k by its model index k − 1 (x_T is T − 1, x_0 is −1): its list is this one minus one.
    """
    if min(t_T, jump_length, jump_n_sample) < 1:
        raise ValueError(f"t_T, jump_length and jump_n_sample must be positive, got {t_T}, {jump_length}, "
                         f"{jump_n_sample}")
    jumps_left = {s: jump_n_sample - 1 for s in range(1, t_T - jump_length + 1, jump_length)}
    t, times = t_T, [t_T]
    while t > 0:
        t -= 1
        times.append(t)
        if jumps_left.get(t, 0) > 0:
            jumps_left[t] -= 1
            for _ in range(jump_length):
                t += 1
                times.append(t)
    return times


@torch.no_grad()
def repaint(eps_fn, chain: Chain, known: torch.Tensor, mask: torch.Tensor, times: list[int],
            clip_x0=None, residual=None, guidance: float = 0.0) -> tuple[torch.Tensor, int]:
    """RePaint (module docstring) along `times` (a `repaint_schedule` on `chain`) from x_{times[0]} ~ N(0, I).

    eps_fn(x, t) is continuous-time (t = τ_k/T at the chain's step k); `known` holds x_0 where mask = 1 (its
    other entries are never read); clip_x0 clamps the model's x̂_0. Returns (x_0, number of model calls).

    With `residual` (x̂_0 (B, ...) → (B,), a measurement's misfit ‖y − A(x̂_0)‖ per image) and `guidance` ζ > 0,
    every reverse step is also guided as diffusion posterior sampling (DPS, Chung et al. 2023), the gradient taken
    through the network:

        x_{k−1}^unknown ← x_{k−1}^unknown − ζ ∇_{x_k} ‖y − A(x̂_0(x_k))‖,

    which conditions elements RePaint cannot replace (no known element in `mask`) on the measurement.
    """
    if guidance and residual is None:
        raise ValueError("guidance needs a residual to differentiate (the measurement's misfit of x̂_0)")
    model = CountedModel(eps_fn)
    known = known * mask
    x = torch.randn_like(known)
    for now, after in zip(times, times[1:]):
        if after > now:
            x = forward_step(chain.schedule, x, after, torch.randn_like(x))
            continue
        if guidance:
            eps, gradient = guided_eps(model, chain, x, now, residual)
        else:
            eps, gradient = chain.eps(model, x, now), None
        unknown = reverse_step(chain.schedule, eps, x, now, torch.randn_like(x), clip_x0)
        if gradient is not None:
            unknown = unknown - guidance * gradient
        noisy_known = chain.schedule.q_sample(known, after, torch.randn_like(x)) if after > 0 else known
        x = mask * noisy_known + (1 - mask) * unknown
    return model.finish(x, 0.0)


def guided_eps(eps_fn, chain: Chain, x: torch.Tensor, k: int, residual) -> tuple[torch.Tensor, torch.Tensor]:
    """ε at step k and DPS's gradient ∇_{x_k} Σ_images residual(x̂_0(x_k)), x̂_0 = (x_k − √(1 − ᾱ_k) ε)/√ᾱ_k with ε
    the network's at x_k (the gradient runs through it; each image's residual depends on its own x_k alone)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        eps = chain.eps(eps_fn, x, k)
        misfit = residual(chain.schedule.x0_from_eps(x, k, eps)).sum()
        gradient, = torch.autograd.grad(misfit, x)
    return eps.detach(), gradient


def known_pixel_residual(model, x: torch.Tensor, mask: torch.Tensor):
    """DPS's misfit of a latent model's latents z to the known pixels: ‖m ⊙ (x − E[x | z])‖ per image, the decoder's
    mean (`model.decoder`) in the data's [−1, 1] units against the pixels where mask = 1."""
    def residual(z: torch.Tensor) -> torch.Tensor:
        return ((model.decoder(z).mean() - x) * mask).flatten(1).norm(dim=1)
    return residual


def binary_mask(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """mask > 0.5 as 0/1 in x's dtype and device, checked to broadcast against x (B, C, H, W)."""
    mask = torch.as_tensor(mask)
    try:
        fits = mask.dim() == x.dim() and torch.broadcast_shapes(mask.shape, x.shape) == x.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the images {tuple(x.shape)}; "
                         "give (B or 1, 1 or C, H, W)")
    return (mask > 0.5).to(device=x.device, dtype=x.dtype)


def fill_unknown(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x with its unknown pixels set to the mean of its known ones (per image and channel; 0 if none known)."""
    mask = mask.expand_as(x)
    known_mean = (x * mask).sum((2, 3), keepdim=True) / mask.sum((2, 3), keepdim=True).clamp(min=1)
    return mask * x + (1 - mask) * known_mean


def fit_known_pixels(model, z: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, steps: int) -> torch.Tensor:
    """The latent consistency step: `steps` of Adam on z from the RePaint latent z_R, minimising

        −Σ_{known i} log p(x_i | z) + ½‖z − z_R‖²,

    the decoder's likelihood of the known pixels (`LSGM.decoder`) held near the score model's
    sample by a unit Gaussian around it."""
    start = z.detach()
    z = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=CONSISTENCY_LEARNING_RATE)
    known = mask.expand_as(x)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            log_likelihood = (model.decoder(z).log_prob_elementwise(x) * known).sum()
            loss = -log_likelihood + 0.5 * (z - start).pow(2).sum()
            loss.backward()
            optimizer.step()
    return z.detach()


@torch.no_grad()
def inpaint(model, x: torch.Tensor, mask: torch.Tensor, t_T: int = 250, jump_length: int = 10,
            jump_n_sample: int = 10, seed: int | None = None, latent_threshold: float = LATENT_THRESHOLD,
            consistency_steps: int = 0, samples: int = 1, guidance: float = 0.0) -> torch.Tensor:
    """Images x (B, C, H, W) completed where mask = 0: x where mask = 1, the model's RePaint completion elsewhere,
    on the data grid of `model.levels`.

    mask: 1 where known, broadcastable to x as (B or 1, 1 or C, H, W) (values > 0.5 count as known); the unknown
    pixels of x are never read. The chain is the model's chain (`chain.model_chain`: its DDPM schedule, or its
    SDE discretised to 1000 steps) respaced to t_T steps, as RePaint runs 250 steps of a 1000-step model.

    RePaint runs in the score model's space: the known image (unknown pixels set to the mean of the known ones)
    is encoded (`model.encode`, the mean; pixel models: the image itself), the known elements there are
    `model.known_latents(mask, latent_threshold)` (pixels: the mask; LSGM: a latent element is known when at least
    `latent_threshold` of the pixels under its cell, at its group's own resolution, are known), x̂_0 is clipped to
    `model.x0_range()` (pixels of discrete data: [−1, 1]); the result is decoded (`model.decode`, the mean) and the
    known pixels are pasted back. `consistency_steps` > 0 adds the
    decoder consistency step (`fit_known_pixels`) before decoding, an option: the score prior over all of the
    latents fills the unknown part by itself (README, "inpainting").

    `guidance` ζ > 0 (latent models) guides every reverse step by the decoder's fit to the known pixels, diffusion
    posterior sampling in the latent space (`repaint`, `known_pixel_residual`): the known pixels reach latent elements
    that no latent cell carries, as under every_second, where RePaint alone replaces nothing and runs unconditionally.

    `samples` > 1 returns the mean of that many completions (independent RePaint draws, run as one batch):
    the Monte-Carlo estimate of E[x | known pixels] under the model, the estimate of least squared error; one draw's
    expected squared error is larger by the conditional variance (twice the mean's, where the model is right). A draw
    is a plausible digit; the mean is blurred where the draws disagree.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive integer (RePaint draws to average), got {samples!r}")
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not 0 <= guidance < math.inf:
        raise ValueError(f"guidance must be a number ≥ 0 (the DPS step size ζ), got {guidance!r}")
    mask = binary_mask(mask, x)
    if samples > 1:
        draws = inpaint(model, x.repeat(samples, 1, 1, 1), mask.repeat(samples if mask.shape[0] > 1 else 1, 1, 1, 1),
                        t_T, jump_length, jump_n_sample, seed, latent_threshold, consistency_steps, guidance=guidance)
        return draws.view(samples, *x.shape).mean(0)
    chain = model_chain(model, t_T)
    times = repaint_schedule(t_T, jump_length, jump_n_sample)
    if (consistency_steps or guidance) and not hasattr(model, "decoder"):
        what = "the consistency step fits" if consistency_steps else "guidance differentiates"
        raise ValueError(f"{what} a latent model's decoder; a {model.kind} model has none")
    residual = known_pixel_residual(model, x, mask) if guidance else None
    with seeded(seed):
        z_known = model.encode(fill_unknown(x, mask), mean=True)
        z, _ = repaint(model.eps_fn(), chain, z_known, model.known_latents(mask, latent_threshold), times,
                       model.x0_range(), residual, guidance)
        if consistency_steps:
            z = fit_known_pixels(model, z, x, mask, consistency_steps)
        completed = model.decode(z, mean=True)
    return mask * x + (1 - mask) * model.to_data_grid(completed)


# --- the command ------------------------------------------------------------------------------------------------
CONFIG = "inpaint"  # configs/inpaint.yaml: the command's keys and defaults


def unknown_rmse(estimate: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> float:
    """√(mean of (estimate − x)² over the unknown entries), in the data's [−1, 1] units."""
    unknown = (1 - mask).expand_as(x)
    return math.sqrt(float(((estimate - x) ** 2 * unknown).sum() / unknown.sum().clamp(min=1)))


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the command (module docstring); returns the rows of the CSV."""
    return run_command(run, CONFIG, "lsgm.apps.inpaint", argv)


def check_arguments(cfg) -> None:
    """Every argument the model is not needed to check, before loading it."""
    lsgm_cli.path(cfg.ckpt, "ckpt")
    for kind in lsgm_cli.non_empty_list(cfg.masks, "masks", "[half,wide]"):
        check_mask(kind)
    lsgm_cli.positive_integer(cfg.num_images, "num_images")
    if not lsgm_cli.is_integer(cfg.t_T) or cfg.t_T < 2:
        raise UsageError(f"t_T must be an integer ≥ 2 (the steps of the respaced chain), got {cfg.t_T!r}")
    lsgm_cli.positive_integer(cfg.jump_length, "jump_length")
    lsgm_cli.positive_integer(cfg.jump_n_sample, "jump_n_sample")
    lsgm_cli.seed(cfg.seed)
    lsgm_cli.choice(cfg.split, SPLITS, "split")
    lsgm_cli.fraction(cfg.latent_threshold, "latent_threshold")
    lsgm_cli.non_negative_integer(cfg.consistency_steps, "consistency_steps")
    lsgm_cli.positive_integer(cfg.samples, "samples")
    lsgm_cli.non_negative_number(cfg.guidance, "guidance")
    for path in (lsgm_cli.output_file(cfg.out, "out", (".png",)), Path(cfg.out).with_suffix(".csv")):
        lsgm_cli.writable(path, "out")


def run(cfg) -> list[dict]:
    """Inpaint, measure and write the grid and the CSV for parsed arguments."""
    check_arguments(cfg)
    model = cli.load_model(cfg.ckpt, cfg.device)
    images = cli.dataset_images(model, cfg.split)[: cfg.num_images]
    train_mean = cli.dataset_images(model, "train").mean(0, keepdim=True)
    size = tuple(images.shape[2:])
    rows, tiles = [], []
    for kind in cfg.masks:
        mask = make_masks(str(kind), len(images), size, cfg.seed).to(images)
        result = inpaint(model, images, mask, cfg.t_T, cfg.jump_length, cfg.jump_n_sample, cfg.seed,
                         cfg.latent_threshold, cfg.consistency_steps, cfg.samples, float(cfg.guidance))
        baseline = mask * images + (1 - mask) * train_mean
        rows.append({"mask": str(kind), "unknown_fraction": round(float(1 - mask.mean()), 4),
                     "rmse": round(unknown_rmse(result, images, mask), 4),
                     "train_mean_rmse": round(unknown_rmse(baseline, images, mask), 4)})
        tiles += [images * mask, result, images]  # the masked input shows its unknown pixels mid-grey (0)
        print(f"{rows[-1]['mask']:>14}  unknown {rows[-1]['unknown_fraction']:.2f}  RMSE {rows[-1]['rmse']:.4f}  "
              f"(train-mean fill {rows[-1]['train_mean_rmse']:.4f})")
    out = Path(cfg.out)
    save_image_grid(torch.cat(tiles).cpu(), out, nrow=len(images), scale=upscale_factor(*size))
    with out.with_suffix(".csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out} (rows per mask: masked input, result, original) and {out.with_suffix('.csv')}")
    return rows


if __name__ == "__main__":
    main()
