"""Inpainting error on the unknown pixels: latent RePaint with and without the decoder step, pixel RePaint, mean fill.

    python benchmarks/inpainting.py --latent CKPT [--pixel CKPT] [--masks wide narrow half lines every_second expand]
        [--num-images 100] [--seeds 0 1 2] [--t-T 250 --jump-length 10 --jump-n-sample 10]
        [--consistency-steps 100] [--samples 8] [--latent-threshold 0.5] [--guidance 1.0]
        [--guided-jump-n-sample 1] [--out DIR] [--threads 2]

On the first `--num-images` images of the digits test split, for every mask type (`lsgm.apps.masks`, or a .png
mask), each method fills the unknown pixels and is scored by the RMSE on the unknown pixels only, in the data's
[−1, 1] units (`lsgm.apps.inpaint.unknown_rmse`):

    mean fill     the mean image of the train split pasted into the unknown pixels (the baseline of
                  `python -m lsgm.apps.inpaint`; no model)
    latent        RePaint on the LSGM's latents (`lsgm.apps.inpaint.inpaint`, --latent checkpoint) decoded as they
                  come out of RePaint (consistency_steps=0)
    latent+step   the same, with `--consistency-steps` Adam steps fitting the latents to the known pixels through
                  the decoder before decoding (an option of the library's inpainting, off by default)
    latent, guided   one draw of latent RePaint guided by the decoder's fit to the known pixels (`inpaint(...,
                  guidance=ζ)`, diffusion posterior sampling through the score network and the decoder; no
                  consistency step), with `--guided-jump-n-sample` resampling: the known pixels reach every latent,
                  also those no known latent cell carries (every_second)
    latent, guided+step   the same guided draw, then the consistency step (both options together)
    pixel         RePaint on the pixels of a pixel-space checkpoint (--pixel, e.g. experiment=digits_ddpm or
                  digits_pixel); left out without --pixel
    ..., mean of draws   the mean of `--samples` RePaint draws per image (`inpaint(..., samples=S)`, latent
                  without the consistency step): the model's estimate of E[x | known pixels], the completion of least
                  squared error. One draw, even from the true conditional, has twice the conditional variance as
                  its expected squared error, so a draw can lose to the mean fill in RMSE where the model is right;
                  the mean of draws is the like-for-like comparison with a mean

All RePaint runs take t_T respaced steps of the model's chain with RePaint's resampling (`--jump-length`,
`--jump-n-sample`). Each seed draws its own masks (`make_masks(kind, n, size, seed)`; only wide and narrow are
random, the others are the same at every seed) and its own RePaint noise; within a seed every method sees the
same masks and the RePaint methods the same seed, so latent and latent+step share their RePaint chain and differ
only by the consistency step. Cells are mean ± standard deviation over `--seeds`.

How to read it: lower is better; the mean fill is the floor a model has to beat (an RMSE near it means the
completion carries no more information about the missing pixels than the average digit). "latent < fill",
"latent+step < fill", "latent mean < fill" and "latent guided < fill" say whether latent RePaint beats the mean
fill: one draw without and with the consistency step, the mean of draws without it, and one guided draw,
"latent+step ≤ pixel" and "latent guided+step ≤ pixel" whether the latent model inpaints at least as well as the
pixel model; the flags compare
the means, so read a close call against the ± first. The summary line counts the masks where each flag holds.
The wall columns of the CSV are seconds per mask and seed on `--threads` CPU threads.

Writes `inpainting.csv` and `inpainting.md` into `--out` (default: <latent run folder>/eval, the run folder being
the checkpoint's folder's parent) and prints the table as rows come.

Measured: see the README, "The score prior over all of the latents" (this table at the default 1000-step budget).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from lsgm.apps import cli
from lsgm.apps.chain import model_chain
from lsgm.apps.inpaint import CONSISTENCY_STEPS, LATENT_THRESHOLD, inpaint, repaint_schedule, unknown_rmse
from lsgm.apps.masks import MASK_TYPES, make_masks
from lsgm.checkpoint import CheckpointError

BENCHMARKS = Path(__file__).resolve().parent
if str(BENCHMARKS) not in sys.path:  # also when loaded by file path (importlib), not as a script
    sys.path.insert(0, str(BENCHMARKS))
from nfe_vs_quality import Report, markdown_row, write_csv  # noqa: E402

PROGRAM = "inpainting"
METHODS = ("mean_fill", "latent", "latent_step", "latent_mean", "latent_guided", "latent_guided_step", "pixel",
           "pixel_mean")
METHOD_HEADERS = ("mean fill", "latent", "latent+step", "latent, mean of draws", "latent, guided",
                  "latent, guided+step", "pixel", "pixel, mean of draws")
# flag: (method, compared with, header, strictly less)
FLAGS = {"latent_beats_fill": ("latent", "mean_fill", "latent < fill", True),
         "latent_step_beats_fill": ("latent_step", "mean_fill", "latent+step < fill", True),
         "latent_mean_beats_fill": ("latent_mean", "mean_fill", "latent mean < fill", True),
         "latent_guided_beats_fill": ("latent_guided", "mean_fill", "latent guided < fill", True),
         "latent_step_at_most_pixel": ("latent_step", "pixel", "latent+step ≤ pixel", False),
         "latent_guided_step_at_most_pixel": ("latent_guided_step", "pixel", "latent guided+step ≤ pixel", False)}
COLUMNS = ("mask", "unknown_fraction",
           *(f"{method}_{what}" for method in METHODS for what in ("rmse", "rmse_std", "wall_s")),
           *FLAGS, "seeds", "num_images")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latent", type=Path, required=True, help="a latent (LSGM) digits checkpoint")
    parser.add_argument("--pixel", type=Path, default=None, help="a pixel-space digits checkpoint (optional)")
    parser.add_argument("--masks", nargs="+", default=list(MASK_TYPES),
                        help=f"mask types ({', '.join(MASK_TYPES)}) or .png masks (default: all types)")
    parser.add_argument("--num-images", type=int, default=100, help="the first N test images")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="mask and RePaint seeds")
    parser.add_argument("--t-T", type=int, default=250, help="RePaint's respaced steps")
    parser.add_argument("--jump-length", type=int, default=10)
    parser.add_argument("--jump-n-sample", type=int, default=10)
    parser.add_argument("--consistency-steps", type=int, default=CONSISTENCY_STEPS,
                        help="the decoder consistency step's Adam steps for latent+step")
    parser.add_argument("--latent-threshold", type=float, default=LATENT_THRESHOLD,
                        help="a latent cell is known when this fraction of the pixels under it is known")
    parser.add_argument("--samples", type=int, default=8,
                        help="RePaint draws averaged per image for the 'mean of draws' columns (1: leave them out)")
    parser.add_argument("--guidance", type=float, default=1.0,
                        help="DPS step size ζ of the 'latent, guided' column (0: leave it out)")
    parser.add_argument("--guided-jump-n-sample", type=int, default=1,
                        help="RePaint's resampling for the guided column (1: none; each guided step differentiates "
                             "the score network and the decoder)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <latent run folder>/eval)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    arguments = parser.parse_args(argv)
    try:
        arguments.times = repaint_schedule(arguments.t_T, arguments.jump_length, arguments.jump_n_sample)
    except ValueError as error:
        parser.error(str(error))
    bad_masks = [mask for mask in arguments.masks if mask not in MASK_TYPES and not is_png_file(mask)]
    if bad_masks:
        parser.error(f"unknown mask(s) {', '.join(bad_masks)}; valid: {', '.join(MASK_TYPES)}, or a .png file")
    if min(arguments.num_images, arguments.consistency_steps, arguments.samples, arguments.guided_jump_n_sample) < 1:
        parser.error("--num-images, --consistency-steps, --samples and --guided-jump-n-sample must be at least 1")
    if not 0 <= arguments.guidance < float("inf"):
        parser.error(f"--guidance must be a finite number ≥ 0, got {arguments.guidance}")
    return arguments


def is_png_file(mask: str) -> bool:
    return mask.lower().endswith(".png") and Path(mask).is_file()


def load_model(path: Path, option: str, latent: bool):
    """The checkpoint's model, or exit with one line if it is unreadable, of the wrong kind, or its RePaint chain
    is too short."""
    try:
        model = cli.load_model(str(path), "cpu")
    except CheckpointError as error:
        raise SystemExit(f"{PROGRAM}: error: {error}") from None
    if latent and model.kind != "lsgm":
        raise SystemExit(f"{PROGRAM}: error: {option} {path} is a {model.kind} model; give a latent (LSGM) checkpoint, "
                         "e.g. of experiment=digits (a pixel one goes to --pixel)")
    if not latent and model.kind not in ("pixel", "ddpm"):
        raise SystemExit(f"{PROGRAM}: error: {option} {path} is a {model.kind} model; give a pixel-space checkpoint, "
                         "e.g. of experiment=digits_ddpm or digits_pixel")
    return model


def check_models(latent, pixel, t_T: int) -> None:
    """Exit with one line if the two models differ in data, or a model's chain cannot be respaced to t_T steps."""
    if pixel is not None and (pixel.config.data.name, pixel.data_shape) != (latent.config.data.name,
                                                                           latent.data_shape):
        raise SystemExit(f"{PROGRAM}: error: --pixel was trained on {pixel.config.data.name} "
                         f"{pixel.data_shape}, --latent on {latent.config.data.name} {latent.data_shape}")
    for model in filter(None, (latent, pixel)):
        try:
            model_chain(model, t_T)
        except ValueError as error:
            raise SystemExit(f"{PROGRAM}: error: --t-T {t_T}: {error}") from None


def complete_all(models: dict, images: torch.Tensor, mask: torch.Tensor, train_mean: torch.Tensor, arguments,
                 seed: int) -> dict[str, tuple[torch.Tensor, float]]:
    """Each method's completion of the masked images and its wall seconds."""
    repaint = {"t_T": arguments.t_T, "jump_length": arguments.jump_length,
               "jump_n_sample": arguments.jump_n_sample, "seed": seed}
    latent = {**repaint, "latent_threshold": arguments.latent_threshold}
    runs = {"mean_fill": lambda: mask * images + (1 - mask) * train_mean,
            "latent": lambda: inpaint(models["latent"], images, mask, consistency_steps=0, **latent),
            "latent_step": lambda: inpaint(models["latent"], images, mask,
                                           consistency_steps=arguments.consistency_steps, **latent)}
    if arguments.samples > 1:
        runs["latent_mean"] = lambda: inpaint(models["latent"], images, mask, consistency_steps=0,
                                              samples=arguments.samples, **latent)
    if arguments.guidance > 0:
        guided = {**latent, "jump_n_sample": arguments.guided_jump_n_sample, "guidance": arguments.guidance}
        runs["latent_guided"] = lambda: inpaint(models["latent"], images, mask, **guided)
        runs["latent_guided_step"] = lambda: inpaint(models["latent"], images, mask,
                                                     consistency_steps=arguments.consistency_steps, **guided)
    if models["pixel"] is not None:
        runs["pixel"] = lambda: inpaint(models["pixel"], images, mask, **repaint)
        if arguments.samples > 1:
            runs["pixel_mean"] = lambda: inpaint(models["pixel"], images, mask, samples=arguments.samples, **repaint)
    return {method: timed(run) for method, run in runs.items()}


def timed(run) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    result = run()
    return result, time.perf_counter() - start


def measure_mask(models: dict, kind: str, images: torch.Tensor, train_mean: torch.Tensor, arguments,
                 seed: int) -> dict:
    """One seed of one mask: the unknown fraction, each method's RMSE and wall seconds."""
    mask = make_masks(kind, len(images), tuple(images.shape[2:]), seed).to(images)
    results = complete_all(models, images, mask, train_mean, arguments, seed)
    return {"unknown_fraction": float(1 - mask.mean()),
            "rmse": {method: unknown_rmse(completed, images, mask) for method, (completed, _) in results.items()},
            "wall_s": {method: wall for method, (_, wall) in results.items()}}


def mean_and_std(values: list[float]) -> tuple[float, float | None]:
    """The mean and the sample standard deviation (None for a single value)."""
    numbers = torch.tensor(values, dtype=torch.float64)
    return numbers.mean().item(), numbers.std().item() if len(values) > 1 else None


def summarize(kind: str, per_seed: list[dict], seeds: list[int], num_images: int) -> dict:
    """A mask's row: each method's RMSE as mean ± std over seeds, its mean wall seconds, and the flags."""
    row = {"mask": kind, "unknown_fraction": mean_and_std([result["unknown_fraction"] for result in per_seed])[0]}
    for method in METHODS:
        if method not in per_seed[0]["rmse"]:
            row |= {f"{method}_rmse": None, f"{method}_rmse_std": None, f"{method}_wall_s": None}
            continue
        rmse, rmse_std = mean_and_std([result["rmse"][method] for result in per_seed])
        wall = mean_and_std([result["wall_s"][method] for result in per_seed])[0]
        row |= {f"{method}_rmse": rmse, f"{method}_rmse_std": rmse_std, f"{method}_wall_s": wall}
    for flag, (better, worse, _, strict) in FLAGS.items():
        row[flag] = holds(row[f"{better}_rmse"], row[f"{worse}_rmse"], strict)
    return row | {"seeds": " ".join(map(str, seeds)), "num_images": num_images}


def holds(better: float | None, worse: float | None, strict: bool) -> bool | None:
    """better < worse (strict) or better ≤ worse; None when either is missing."""
    if better is None or worse is None:
        return None
    return better < worse if strict else better <= worse


def plus_minus(mean: float | None, std: float | None) -> str:
    if mean is None:
        return ""
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def yes_no(flag: bool | None) -> str:
    return "" if flag is None else ("yes" if flag else "no")


def table_header() -> list[str]:
    headers = ("mask", "unknown", *METHOD_HEADERS, *(label for _, _, label, _ in FLAGS.values()))
    return [markdown_row(headers), markdown_row(["---"] + ["---:"] * (len(headers) - 1))]


def table_cells(row: dict) -> list[str]:
    return [row["mask"], f"{row['unknown_fraction']:.2f}",
            *(plus_minus(row[f"{method}_rmse"], row[f"{method}_rmse_std"]) for method in METHODS),
            *(yes_no(row[flag]) for flag in FLAGS)]


def summary_lines(rows: list[dict]) -> list[str]:
    """How many masks each flag holds on, and each method's wall seconds summed over masks (per seed)."""
    counts = [f"{label} on {sum(bool(row[flag]) for row in rows)} of {len(rows)} masks"
              for flag, (_, _, label, _) in FLAGS.items() if rows[0][flag] is not None]
    walls = [f"{header} {sum(row[f'{method}_wall_s'] for row in rows):.1f}"
             for method, header in zip(METHODS, METHOD_HEADERS) if rows[0][f"{method}_wall_s"] is not None]
    return ["", "Holds: " + "; ".join(counts) + ".", "Wall seconds per seed, all masks: " + ", ".join(walls) + "."]


def header_line(arguments, images: torch.Tensor) -> str:
    model_calls = sum(after < now for now, after in zip(arguments.times, arguments.times[1:]))
    pixel = f", pixel {arguments.pixel}" if arguments.pixel else ""
    return (f"latent {arguments.latent}{pixel}: the first {len(images)} test images, seeds "
            f"{' '.join(map(str, arguments.seeds))}; RePaint t_T = {arguments.t_T}, jump length "
            f"{arguments.jump_length}, jump_n_sample {arguments.jump_n_sample} ({model_calls} model calls per run); "
            f"latent threshold {arguments.latent_threshold}; consistency step {arguments.consistency_steps} Adam "
            f"steps; mean of {arguments.samples} draws; guided: DPS ζ = {arguments.guidance}, one draw, "
            f"jump_n_sample {arguments.guided_jump_n_sample}; "
            "RMSE on the unknown pixels, mean ± std "
            "over seeds\n")


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the comparison; returns the rows (one per mask)."""
    arguments = parse_arguments(argv)
    torch.set_num_threads(arguments.threads)
    models = {"latent": load_model(arguments.latent, "--latent", latent=True),
              "pixel": load_model(arguments.pixel, "--pixel", latent=False) if arguments.pixel else None}
    check_models(models["latent"], models["pixel"], arguments.t_T)
    images = cli.dataset_images(models["latent"], "test")[: arguments.num_images]
    train_mean = cli.dataset_images(models["latent"], "train").mean(0, keepdim=True)
    out = arguments.out or arguments.latent.resolve().parent.parent / "eval"
    out.mkdir(parents=True, exist_ok=True)

    report = Report()
    report.add(header_line(arguments, images))
    for line in table_header():
        report.add(line)
    rows = []
    for kind in arguments.masks:
        per_seed = [measure_mask(models, kind, images, train_mean, arguments, seed) for seed in arguments.seeds]
        rows.append(summarize(kind, per_seed, arguments.seeds, len(images)))
        report.add(markdown_row(table_cells(rows[-1])))
    for line in summary_lines(rows):
        report.add(line)
    csv_path = write_csv(rows, out / f"{PROGRAM}.csv", COLUMNS)
    print(f"wrote {csv_path} and {report.write(out / f'{PROGRAM}.md')}")
    return rows


if __name__ == "__main__":
    main()
