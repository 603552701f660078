"""Sample quality at the same training budget: LSGM's samplers, its VAE's own prior and a pixel DDPM, over seeds.

    python benchmarks/sample_quality.py --lsgm RUN0 RUN1 RUN2 --ddpm RUN0 RUN1 RUN2 [--num-samples 1000] [--out DIR]
        [--skip-ancestral]
    python benchmarks/sample_quality.py --lsgm RUN0 RUN1 RUN2                    # the LSGM and VAE rows only
    python benchmarks/sample_quality.py --train --seeds 0 1 2 --out DIR [hydra overrides...]  # train, then measure

Rows (each a mean over the seeds):

    LSGM          `experiment=digits`: DPM-Solver++(2M) 10/20 steps (NFE = steps), Heun 5/10 steps (EDM times,
                  NFE = 2·steps − 1), and the samplers that need no tuning: the probability-flow ODE (dopri5,
                  rtol = atol = 1e-3) and DDPM ancestral sampling (T = 1000)
    VAE prior     the same LSGM checkpoint sampling its VAE's own hierarchical prior (`prior="vae"`, 0 NFE)
    pixel DDPM    `experiment=digits_ddpm`: ancestral sampling on its T = 1000 chain, DDIM 20 steps
    train split   real images measured the same way (as many as samples, drawn without replacement)

A run folder's checkpoint is checkpoints/best.pt (by validation bound), else checkpoints/last.pt. A run trained
with seed s (its config's `seed`) draws its samples with sampling seed s, so the spread over seeds carries both the
training noise and the sampling noise. `--train` first runs `train_joint.py` for every seed with
`experiment=digits` and `experiment=digits_ddpm` (`logger=none threads=1 seed=S`, into DIR/lsgm_seed<S> and
DIR/ddpm_seed<S>, two processes at a time; `--models` picks the groups), each at its preset's step budget (the same
for both; hydra overrides, e.g. `train.steps=1000`, go to every training: put them first or after a one-value
option such as `--out DIR`, not after `--seeds`). A folder that already holds checkpoints/last.pt resumes there.

Columns: NFE, the score-network evaluations per sample (mean over batches and seeds); wall, the seconds to draw
`--num-samples` samples (sampling and decoding, not the metrics, on `--threads` CPU threads; mean over seeds);
digits-FD, the Fréchet distance of the shipped digits classifier's penultimate features between the samples and the
digits test split (lower is better), mean ± standard deviation over the seeds; H(p̄), the entropy of the mean
predicted class distribution (class diversity, at most log 10 = 2.303 nats), and mean H(p), the mean per-sample
predictive entropy (high for ambiguous, blurry digits), both means over the seeds.

How to read it: the train-split row is the digits-FD a perfect model would reach with this many images (FD is
biased upward at small sample counts); what a row has above it is the model's and its sampler's error. Within the
LSGM rows the ODE and DDPM rows are the converged samplers: a fast sampler that matches them loses nothing. LSGM
against the VAE row is what the score prior adds to the same decoder; LSGM against the pixel DDPM compares a latent
and a pixel-space model trained for as many steps. Read a difference between rows against their standard
deviations over seeds.

Writes `sample_quality.csv` (one line per row and seed, raw numbers) and `sample_quality.md` (the table) into
`--out`, and prints the table's rows as they come (per-seed progress goes to stderr).

Measured: see the README, "The score prior over all of the latents" (this table at the default 1000-step budget).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import torch

import lsgm
from lsgm.checkpoint import CheckpointError
from sde.sampling import NonFiniteError

BENCHMARKS = Path(__file__).resolve().parent
if str(BENCHMARKS) not in sys.path:  # also when loaded by file path (importlib), not as a script
    sys.path.insert(0, str(BENCHMARKS))
from nfe_vs_quality import (  # noqa: E402
    COLUMNS,
    METRICS,
    REFERENCE,
    SweepEntry,
    format_cell,
    markdown_row,
    measure_reference,
    measure_sampler,
    parse_entry,
)

ROOT = BENCHMARKS.parent
PROGRAM = "sample_quality"
PRESETS = {"lsgm": "digits", "ddpm": "digits_ddpm"}
LSGM_ENTRIES = ("dpm2m:steps=10", "dpm2m:steps=20", "heun:steps=5", "heun:steps=10", "ode:rtol=1e-3,atol=1e-3", "ddpm")
DDPM_ENTRIES = ("ddpm", "ddim:steps=20")
# The VAE's own prior: `model.sample(prior="vae")` returns before any sampler runs, so the sampler name is only a
# label (it has no configs/sampler file, hence no default options).
VAE_PRIOR = SweepEntry("vae prior", "prior=vae", {"prior": "vae"})
CSV_COLUMNS = ("model", "seed", "run", *COLUMNS)
HEADERS = ("model", "sampler", "options", "NFE", "wall (s)", "digits-FD", "H(p̄) (nats)", "mean H(p) (nats)", "seeds")


@dataclass(frozen=True)
class Row:
    """One row of the table: a model group's label and the sampler entry it is drawn with."""

    model: str
    group: str
    entry: SweepEntry


ROWS = (
    *(Row("LSGM", "lsgm", parse_entry(text)) for text in LSGM_ENTRIES),
    Row("VAE (own prior)", "lsgm", VAE_PRIOR),
    *(Row("pixel DDPM", "ddpm", parse_entry(text)) for text in DDPM_ENTRIES),
)


@dataclass
class Run:
    """A loaded run: its folder, the training seed from its config, and the model of its checkpoint."""

    folder: Path
    seed: int
    model: torch.nn.Module


def fail(message: str) -> NoReturn:
    """One line `sample_quality: error: ...` on stderr and exit status 2 (as argparse does)."""
    print(f"{PROGRAM}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def checkpoint_of(folder: Path) -> Path:
    """The run folder's checkpoints/best.pt, else checkpoints/last.pt; an error if it has neither."""
    for name in ("best.pt", "last.pt"):
        path = folder / "checkpoints" / name
        if path.is_file():
            return path
    fail(f"{folder} has no checkpoints/best.pt or checkpoints/last.pt (not a finished run folder?)")


def load_run(folder: Path, group: str) -> Run:
    """The run's model, checked to be a digits model of the group (`lsgm`: with a VAE; `ddpm`: a pixel chain)."""
    path = checkpoint_of(folder)
    try:
        model = lsgm.load(path)
    except CheckpointError as error:
        fail(str(error))
    if model.config.data.name != "digits":
        fail(f"digits-FD needs a digits model; {path} was trained on {model.config.data.name}")
    if model.kind != group:
        fail(f"--{group} wants a {group} run (experiment={PRESETS[group]}); {path} is a {model.kind} model")
    return Run(folder, int(model.config.seed), model)


def load_group(folders: list[Path], group: str) -> list[Run]:
    """The runs of one group, one per training seed."""
    runs = [load_run(folder, group) for folder in folders]
    seeds = [run.seed for run in runs]
    if len(set(seeds)) < len(seeds):
        fail(f"--{group} runs share a training seed ({', '.join(map(str, seeds))}): give one run per seed")
    return runs


def train_command(out: Path, group: str, seed: int, overrides: list[str]) -> tuple[list[str], Path]:
    """The train_joint.py command line of one group and seed, and its run folder."""
    run = out / f"{group}_seed{seed}"
    command = [sys.executable, str(ROOT / "train_joint.py"), f"experiment={PRESETS[group]}", "logger=none",
               "threads=1", f"seed={seed}", f"hydra.run.dir={run}", *overrides]
    return command, run


def train_one(command: list[str], run: Path) -> int:
    """Run one training with its output in <run>.log; its exit status."""
    with open(run.with_suffix(".log"), "w") as log:
        print(f"training {run.name} (log: {log.name})", file=sys.stderr, flush=True)
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode


def train(out: Path, groups: list[str], seeds: list[int], overrides: list[str], parallel: int) -> dict[str, list[Path]]:
    """Every group at every seed, `parallel` trainings at a time (one thread each); the run folders by group."""
    out.mkdir(parents=True, exist_ok=True)
    jobs = {(group, seed): train_command(out, group, seed, overrides) for seed in seeds for group in groups}
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        statuses = list(pool.map(lambda job: train_one(*job), jobs.values()))
    failed = [str(run.with_suffix(".log")) for (_, run), status in zip(jobs.values(), statuses) if status]
    if failed:
        fail(f"training failed: see {', '.join(failed)}")
    return {group: [jobs[group, seed][1] for seed in seeds] for group in groups}


def row_label(row: Row) -> str:
    """`model sampler options` of a row for the progress lines."""
    return " ".join(part for part in (row.model, row.entry.sampler, row.entry.text) if part)


def measure_row(row: Row, runs: list[Run], num_samples: int, batch_size: int) -> list[dict]:
    """The row's raw measurements, one per run (sampling seed = its training seed); a failed sampler is skipped."""
    measurements = []
    for run in runs:
        try:
            result = measure_sampler(run.model, row.entry, num_samples, run.seed, batch_size)
        except NonFiniteError as error:
            print(f"  {row_label(row)} seed {run.seed}: failed: {error}", file=sys.stderr, flush=True)
            continue
        measurements.append({"model": row.model, "seed": run.seed, "run": str(run.folder), **result})
        print(f"  {row_label(row)} seed {run.seed}: digits-FD "
              f"{result['digits_fd']:.4g}, {result['nfe']:g} NFE, {result['wall_s']:.1f} s",
              file=sys.stderr, flush=True)
    return measurements


def measure_references(data_config, seeds: list[int], num_samples: int) -> list[dict]:
    """The train-split reference at every sampling seed."""
    return [{"model": REFERENCE, "seed": seed, "run": "", **measure_reference(data_config, num_samples, seed)}
            for seed in seeds]


def mean_and_spread(values: list[float]) -> str:
    """`mean ± standard deviation` (over seeds; the mean alone for one value)."""
    if len(values) < 2:
        return format_cell(statistics.fmean(values))
    return f"{format_cell(statistics.fmean(values))} ± {format_cell(statistics.stdev(values))}"


def mean_of(measurements: list[dict], column: str) -> float | None:
    """The mean of a column over the measurements that have it (None for none: the reference's NFE)."""
    values = [measurement[column] for measurement in measurements if measurement[column] is not None]
    return statistics.fmean(values) if values else None


def table_row(model: str, sampler: str, options: str, measurements: list[dict], expected: int) -> list[str]:
    """The table cells of one row from its per-seed measurements (`expected` of them when none failed)."""
    seeds = f"{len(measurements)}/{expected}"
    if not measurements:
        return [model, sampler, options, "", "", "failed at every seed", "", "", seeds]
    return [model, sampler, options, format_cell(mean_of(measurements, "nfe")),
            format_cell(mean_of(measurements, "wall_s")),
            mean_and_spread([measurement["digits_fd"] for measurement in measurements]),
            *(format_cell(mean_of(measurements, column)) for column in METRICS[1:]), seeds]


def table_header() -> list[str]:
    """The Markdown header and alignment lines (numbers right-aligned)."""
    return [markdown_row(HEADERS), markdown_row(["---"] * 3 + ["---:"] * (len(HEADERS) - 3))]


class Outputs:
    """The CSV (appended to as measurements come) and the Markdown table (rewritten after every row)."""

    def __init__(self, out: Path, title: str):
        out.mkdir(parents=True, exist_ok=True)
        self.csv_path, self.markdown_path = out / "sample_quality.csv", out / "sample_quality.md"
        self.handle = open(self.csv_path, "w", newline="")
        self.writer = csv.DictWriter(self.handle, fieldnames=CSV_COLUMNS)
        self.writer.writeheader()
        self.lines = [title, "", *table_header()]
        print("\n".join(self.lines), flush=True)

    def add(self, measurements: list[dict], cells: list[str]) -> None:
        self.writer.writerows(measurements)
        self.handle.flush()
        self.lines.append(markdown_row(cells))
        print(self.lines[-1], flush=True)
        self.markdown_path.write_text("\n".join(self.lines) + "\n")

    def close(self) -> None:
        self.handle.close()
        print(f"\nwrote {self.csv_path}\nwrote {self.markdown_path}")


def measure(runs_by_group: dict[str, list[Run]], arguments: argparse.Namespace) -> None:
    """Every row of the chosen groups over their runs, the reference first; prints and writes the table."""
    seeds = sorted({run.seed for runs in runs_by_group.values() for run in runs})
    data_config = next(iter(runs_by_group.values()))[0].model.config.data
    title = (f"sample quality, same training budget for every row, over {len(seeds)} seed(s) "
             f"({', '.join(map(str, seeds))}): {arguments.num_samples} samples per row and seed, "
             f"{arguments.threads} thread(s)")
    outputs = Outputs(arguments.out, title)
    references = measure_references(data_config, seeds, arguments.num_samples)
    outputs.add(references, table_row(REFERENCE, "", references[0]["options"], references, len(seeds)))
    for row in ROWS:
        runs = runs_by_group.get(row.group)
        if runs and not (arguments.skip_ancestral and row.entry.sampler == "ddpm"):
            measurements = measure_row(row, runs, arguments.num_samples, arguments.batch_size)
            cells = table_row(row.model, row.entry.sampler, row.entry.text, measurements, len(runs))
            outputs.add(measurements, cells)
    outputs.close()


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lsgm", nargs="+", type=Path, default=[], metavar="RUN",
                        help="LSGM run folders (experiment=digits), one per seed: the LSGM and VAE rows")
    parser.add_argument("--ddpm", nargs="+", type=Path, default=[], metavar="RUN",
                        help="pixel DDPM run folders (experiment=digits_ddpm), one per seed")
    parser.add_argument("--train", action="store_true", help="train the runs into --out first, then measure them")
    parser.add_argument("--models", nargs="+", choices=tuple(PRESETS), default=list(PRESETS),
                        help="the groups to train (--train; default: both)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds (--train)")
    parser.add_argument("--parallel", type=int, default=2, help="trainings at a time, one thread each (--train)")
    parser.add_argument("--out", type=Path, default=Path("sample_quality"),
                        help="output folder, and the runs' folder with --train (default: ./sample_quality)")
    parser.add_argument("--num-samples", type=int, default=1000, help="samples per row and seed (and real images)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads of the measurements")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--skip-ancestral", action="store_true",
                        help="leave out the 1000-step ancestral rows (minutes a seed on a CPU)")
    parser.add_argument("overrides", nargs="*", help="hydra overrides for every training (--train)")
    arguments = parser.parse_args(argv)
    if arguments.train == bool(arguments.lsgm or arguments.ddpm):
        parser.error("give either --train or run folders (--lsgm and/or --ddpm)")
    if arguments.overrides and not arguments.train:
        parser.error(f"hydra overrides ({' '.join(arguments.overrides)}) need --train")
    arguments.seeds = list(dict.fromkeys(arguments.seeds))  # a seed once: its run folder is trained once
    if arguments.num_samples < 2:
        parser.error("--num-samples must be at least 2 (a Fréchet distance needs a covariance)")
    return arguments


def main(argv: list[str] | None = None) -> None:
    """Train the runs (--train) or take the given ones, then measure every row."""
    arguments = parse_arguments(argv)
    torch.set_num_threads(arguments.threads)
    if arguments.train:
        folders = train(arguments.out, arguments.models, arguments.seeds, arguments.overrides, arguments.parallel)
    else:
        folders = {group: runs for group, runs in (("lsgm", arguments.lsgm), ("ddpm", arguments.ddpm)) if runs}
    measure({group: load_group(runs, group) for group, runs in folders.items()}, arguments)


if __name__ == "__main__":
    main()
