"""Sample quality against sampling cost: digits-FD of a trained digits model for each sampler and step count.

    python benchmarks/nfe_vs_quality.py CKPT [--num-samples 1000] [--threads 2] [--out DIR] [--samplers ENTRY ...]
        [--wandb]

Each sweep entry draws the same number of samples (`--num-samples`) with the same seed, so every sampler starts
from the same latent noise z_1 and decodes with the same decoder noise: the rows differ only by the sampler.
An entry is `name` or `name:key=value,key=value` with a sampler of `sde.sampling.SAMPLERS` and its options on
top of configs/sampler/<name>.yaml (e.g. `ddim:steps=10`, `ode:rtol=1e-3,atol=1e-3`); `default` stands for
the default sweep below and `stochastic` for the reverse SDE and predictor-corrector entries
(`--samplers default stochastic` runs both).

    default      ODE dopri5 at rtol = atol ∈ {1e-2, 1e-3, 1e-5}; DDPM ancestral (T = 1000); DDIM 10/20/50 steps;
                 Heun 10/20 steps (EDM times, NFE = 2·steps − 1); DPM-Solver++(2M) 10/20 steps (NFE = steps)
    stochastic   reverse SDE, Euler–Maruyama 100/1000 steps; PC 100 steps (reverse diffusion + 1 Langevin step)

Columns: NFE, the score-network evaluations per sample batch (= per sample; for the adaptive ODE the mean over
batches, which differ); wall, the seconds to draw all samples (sampling and decoding, not the metrics, on
`--threads` CPU threads); digits-FD, the Fréchet distance of the shipped digits classifier's 64 penultimate
features between the samples and the 360-image digits test split (lower is better); H(p̄), the entropy of the
mean predicted class distribution (class diversity, at most log 10 = 2.303 nats); mean H(p), the mean per-sample
predictive entropy (0 when every sample is classified with certainty; high for ambiguous, blurry digits).

How to read it: the reference row is the digits train split measured the same way (as many images as samples,
drawn without replacement, or all 1437 when fewer): the digits-FD a perfect model would reach with this many
images, since FD is biased upward at small sample counts and the test split has only 360 images. Compare
samplers at equal NFE; a sampler has converged when more NFE stops lowering its FD, and what is left above the
reference row is the model's error, not the sampler's. FD moves by chance too: rerun with another `--seed` to
see by how much before reading a difference between rows. The classifier was fitted on the train split, so that
row's mean H(p) is lower than a held-out split's would be, and its FD may overstate the floor a little.

Writes `nfe_vs_quality.csv` and `nfe_vs_quality.png` (digits-FD against NFE on a log axis, one marker per
sampler family, the reference as a dashed line) into `--out` (default: <run folder>/eval, the run folder being
the checkpoint's folder's parent), and prints a Markdown table as the rows come. With `--wandb`, the table and the
plot also go to an offline wandb run in `--out` (its wandb/offline-run-*, in the training run's project and group;
upload it with `wandb sync`): the table as a `wandb.Table` and tables/nfe_vs_quality.csv (`lsgm.log.RunLogger`).
"""

from __future__ import annotations

import argparse
import ast
import csv
import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.ticker import LogFormatter

import lsgm
from lsgm.checkpoint import CheckpointError
from lsgm.cli import sampler_defaults
from lsgm.data import load_dataset
from lsgm.log import RunLogger
from lsgm.metrics.plots import new_figure, save_figure
from lsgm.metrics.quality import sample_quality
from lsgm.sample import draw
from sde import sampling
from sde.sampling import SAMPLERS, NonFiniteError

DEFAULT_SWEEP = (
    "ode:rtol=1e-2,atol=1e-2", "ode:rtol=1e-3,atol=1e-3", "ode:rtol=1e-5,atol=1e-5",
    "ddpm",
    "ddim:steps=10", "ddim:steps=20", "ddim:steps=50",
    "heun:steps=10", "heun:steps=20",
    "dpm2m:steps=10", "dpm2m:steps=20",
)
STOCHASTIC_SWEEP = ("sde:steps=100", "sde:steps=1000", "pc:steps=100")
SWEEP_GROUPS = {"default": DEFAULT_SWEEP, "stochastic": STOCHASTIC_SWEEP}
METRICS = ("digits_fd", "class_diversity_nats", "class_confidence_entropy_nats")
COLUMNS = ("sampler", "options", "nfe", "wall_s", *METRICS, "num_images")
HEADERS = ("sampler", "options", "NFE", "wall (s)", "digits-FD", "H(p̄) (nats)", "mean H(p) (nats)", "images")
MARKERS = "osD^v<>P*X"
REFERENCE = "train split"


@dataclass(frozen=True)
class SweepEntry:
    """One sampler run: the sampler, the options as given on the command line (text) and parsed."""

    sampler: str
    text: str
    options: dict


def parse_value(text: str):
    """A Python literal (numbers, booleans, None) or else the text itself (method names)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def sampler_options(sampler: str) -> list[str]:
    """The options `sde.sampling.sample` takes for a sampler, without those that `model.sample` sets itself (the
    generator; the temperature, which scales z_1 there) and the explicit time grid (the sweep sets `steps`)."""
    unset = ("callback", "generator", "temperature", "times")
    return [name for name in sampling.sampler_options(sampler) if name not in unset]


def parse_entry(entry: str) -> SweepEntry:
    """`name` or `name:key=value,...` -> SweepEntry; argparse's error for an unknown sampler or a bad option."""
    sampler, _, text = entry.partition(":")
    if sampler not in SAMPLERS:
        raise argparse.ArgumentTypeError(f"unknown sampler {sampler!r} in {entry!r}; valid: {', '.join(SAMPLERS)}, "
                                         f"or a group: {', '.join(SWEEP_GROUPS)}")
    pairs = [pair.partition("=") for pair in text.split(",")] if text else []
    if any(not key or not equals or not value for key, equals, value in pairs):
        raise argparse.ArgumentTypeError(f"options must look like key=value,key=value; got {entry!r}")
    unknown = [key for key, _, _ in pairs if key not in sampler_options(sampler)]
    if unknown:
        raise argparse.ArgumentTypeError(f"{sampler} has no option(s) {', '.join(unknown)}; "
                                         f"valid: {', '.join(sampler_options(sampler))}")
    return SweepEntry(sampler, text, {key: parse_value(value) for key, _, value in pairs})


def expand_sweep(entries: list[str]) -> list[SweepEntry]:
    """The entries with the group names replaced by their entries."""
    return [parse_entry(entry) for name in entries for entry in SWEEP_GROUPS.get(name, (name,))]


class NFERecorder:
    """The model for `draw`, recording the NFE of each batch it samples."""

    def __init__(self, model):
        self.model, self.nfes = model, []

    def parameters(self):
        return self.model.parameters()

    def sample(self, *args, **kwargs):
        images, nfe = self.model.sample(*args, **kwargs)
        self.nfes.append(nfe)
        return images, nfe


def measure_sampler(model, entry: SweepEntry, num_samples: int, seed: int, batch_size: int) -> dict:
    """One row: mean NFE per batch, wall seconds of the draw, and the sample-quality metrics."""
    recorder = NFERecorder(model)
    options = {**sampler_defaults(entry.sampler), **entry.options}
    start = time.perf_counter()
    images, _ = draw(recorder, num_samples, entry.sampler, options, batch_size=batch_size, seed=seed)
    wall = time.perf_counter() - start
    nfe = sum(recorder.nfes) / len(recorder.nfes)
    return {"sampler": entry.sampler, "options": entry.text, "nfe": nfe, "wall_s": wall,
            **quality_columns(images, model.config.data)}


def measure_reference(data_config, num_samples: int, seed: int) -> dict:
    """The reference row: `num_samples` images of the train split (all of it when fewer), drawn with `seed`."""
    train = load_dataset(data_config.name, data_config.root, split="train", val_fraction=0).x
    chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:num_samples]
    return {"sampler": REFERENCE, "options": f"{len(chosen)} of {len(train)} images", "nfe": None, "wall_s": None,
            **quality_columns(train[chosen], data_config)}


def quality_columns(images: torch.Tensor, data_config) -> dict:
    metrics = sample_quality(images, data=data_config.name, root=data_config.root)
    return {key: metrics[key] for key in METRICS} | {"num_images": len(images)}


def format_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.0f}" if value.is_integer() else f"{value:.4g}"
    return str(value)


def markdown_row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def print_header() -> None:
    print(markdown_row(HEADERS))
    print(markdown_row(["---"] * 2 + ["---:"] * (len(HEADERS) - 2)), flush=True)


def print_row(row: dict) -> None:
    print(markdown_row(format_cell(row[column]) for column in COLUMNS), flush=True)


def write_csv(rows: list[dict], path: Path, columns=COLUMNS) -> Path:
    """The rows as a CSV with the given columns (this script's by default; the other benchmarks pass theirs)."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    return path


class Report:
    """Lines printed as they come and kept for a .md file (the benchmarks' Markdown tables)."""

    def __init__(self):
        self.lines: list[str] = []

    def add(self, line: str = "") -> None:
        self.lines.append(line)
        print(line, flush=True)

    def write(self, path: Path) -> Path:
        path.write_text("\n".join(self.lines) + "\n")
        return path


def option_pairs(text: str) -> list[tuple[str, str]]:
    return [(key, value) for key, _, value in (pair.partition("=") for pair in text.split(","))] if text else []


def point_label(text: str) -> str:
    """An entry's option values for its point in the plot, equal ones once: `rtol=1e-2,atol=1e-2` -> `1e-2`,
    `method=srk,steps=100` -> `srk/100`."""
    return "/".join(dict.fromkeys(value for _, value in option_pairs(text)))


def key_label(text: str) -> str:
    """What `point_label` shows: `rtol = atol` for `rtol=1e-2,atol=1e-2`, `method/steps` for `method=srk,steps=100`."""
    pairs = option_pairs(text)
    return (" = " if len({value for _, value in pairs}) == 1 else "/").join(key for key, _ in pairs)


def family_label(family: str, texts: list[str]) -> str:
    keys = [key for key in dict.fromkeys(map(key_label, texts)) if key]
    return f"{family} ({'; '.join(keys)})" if keys else family


def plot_fd_against_nfe(rows: list[dict], reference: dict, title: str, path: Path) -> Path:
    """digits-FD against NFE (log x): one marker and line per sampler family, each point labelled with its option
    values (the legend names them); the reference row as a dashed horizontal line."""
    figure = new_figure(1000, 560)
    axes = figure.subplots()
    families = dict.fromkeys(row["sampler"] for row in rows)
    for family, marker in zip(families, itertools.cycle(MARKERS)):
        points = sorted((row["nfe"], row["digits_fd"], row["options"]) for row in rows if row["sampler"] == family)
        nfes, fds, texts = zip(*points)
        axes.plot(nfes, fds, marker=marker, label=family_label(family, texts))
        for nfe, fd, text in points:
            axes.annotate(point_label(text), (nfe, fd), textcoords="offset points", xytext=(5, 4), fontsize=8)
    axes.axhline(reference["digits_fd"], color="black", linestyle="--", linewidth=1,
                 label=f"{REFERENCE} vs test\n({reference['num_images']} images)")
    axes.set_xscale("log")
    axes.margins(x=0.08)
    axes.xaxis.set_major_formatter(LogFormatter())
    axes.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
    axes.set(xlabel="NFE (score-network evaluations per sample)", ylabel="digits-FD vs the test split", title=title)
    axes.grid(True, which="both", alpha=0.3)
    figure.legend(loc="outside right upper")
    return save_figure(figure, path)


def log_to_wandb(rows: list[dict], plot: Path | None, out: Path, arguments: argparse.Namespace, model) -> None:
    """The rows as the table `nfe_vs_quality` (and the plot, when there is one) in an offline wandb run in `out`,
    in the project and group of the run that trained `model`."""
    run_logger = model.config.logger
    config = {"checkpoint": str(arguments.checkpoint), "num_samples": arguments.num_samples, "seed": arguments.seed,
              "batch_size": arguments.batch_size, "samplers": arguments.samplers}
    with RunLogger(out, mode="offline", project=run_logger.get("project") or "lsgm", group=run_logger.get("group"),
                   name=f"{arguments.checkpoint.resolve().parent.parent.name}-nfe_vs_quality", job_type="benchmark",
                   tags=["nfe_vs_quality"], config=config) as logger:
        logger.log_table("nfe_vs_quality", COLUMNS, [[row[column] for column in COLUMNS] for row in rows], step=0)
        if plot is not None:
            logger.log_images("nfe_vs_quality_plot", plot, 0)
    print(f"wandb: an offline run in {out / 'wandb'} (upload with wandb sync)")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a digits run's checkpoint (e.g. runs/x/checkpoints/best.pt)")
    parser.add_argument("--num-samples", type=int, default=1000, help="samples per sampler (and reference images)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <run folder>/eval)")
    parser.add_argument("--samplers", nargs="+", default=["default"], metavar="ENTRY",
                        help="name[:key=value,...] entries or the groups default, stochastic (default: default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--wandb", action="store_true",
                        help="also log the table and plot to an offline wandb run in the output folder")
    arguments = parser.parse_args(argv)
    try:
        arguments.sweep = expand_sweep(arguments.samplers)
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    if arguments.num_samples < 2:
        parser.error("--num-samples must be at least 2 (a Fréchet distance needs a covariance)")
    return arguments


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the sweep; returns the rows, the reference row first."""
    arguments = parse_arguments(argv)
    torch.set_num_threads(arguments.threads)
    try:
        model = lsgm.load(arguments.checkpoint)
    except CheckpointError as error:
        raise SystemExit(f"nfe_vs_quality: error: {error}") from None
    data_config = model.config.data
    if data_config.name != "digits":
        raise SystemExit(f"digits-FD needs a digits model; {arguments.checkpoint} was trained on {data_config.name}")
    run_folder = arguments.checkpoint.resolve().parent.parent
    out = arguments.out or run_folder / "eval"
    out.mkdir(parents=True, exist_ok=True)

    print(f"{arguments.checkpoint}: {arguments.num_samples} samples per sampler, seed {arguments.seed}, "
          f"batches of {arguments.batch_size}, {arguments.threads} thread(s)\n")
    print_header()
    reference = measure_reference(data_config, arguments.num_samples, arguments.seed)
    print_row(reference)
    rows = []
    for entry in arguments.sweep:
        try:
            row = measure_sampler(model, entry, arguments.num_samples, arguments.seed, arguments.batch_size)
        except NonFiniteError as error:
            print(markdown_row([entry.sampler, entry.text, f"failed: {error}"]), flush=True)
            continue
        rows.append(row)
        print_row(row)
    csv_path = write_csv([reference, *rows], out / "nfe_vs_quality.csv")
    print(f"\n(H(p̄) is at most log 10 = {math.log(10):.3f} nats)\nwrote {csv_path}")
    plot = None
    if rows:
        title = f"{run_folder.name}: {arguments.num_samples} samples per sampler, seed {arguments.seed}"
        plot = plot_fd_against_nfe(rows, reference, title, out / "nfe_vs_quality.png")
        print(f"wrote {plot}")
    if arguments.wandb:
        log_to_wandb([reference, *rows], plot, out, arguments, model)
    return [reference, *rows]


if __name__ == "__main__":
    main()
