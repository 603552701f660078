"""Class-conditional sampling: how often a sample is the class it was asked for, per guidance scale and sampler.

    python benchmarks/class_conditioning.py CKPT [--guidance 1 2 4] [--samplers dpm2m:steps=20 heun:steps=10]
        [--per-class 100] [--seeds 0 1 2] [--out DIR] [--threads 2] [--batch-size 256]

CKPT is a class-conditional digits checkpoint (trained with `experiment=digits_class` or `digits_class_pixel`).
For every guidance scale w × sampler × seed, the model draws `--per-class` samples of each of the 10 classes
with classifier-free guidance ε̂(z, t, ∅) + w·(ε̂(z, t, y) − ε̂(z, t, ∅)) (w = 0: the unconditional model,
1: the conditional one, > 1: sharper), and the shipped digits classifier (lsgm/assets/digits_classifier.pt,
`lsgm.metrics.digits_classifier`) labels each sample by its most probable class. A seed fixes the latent noise
z_1 and the decoder's noise (`lsgm.sample.draw`), so at a given seed every guidance scale and sampler starts
from the same z_1: the rows differ only by w and the sampler. Sampler entries are `name` or
`name:key=value,...` as in nfe_vs_quality.py (options on top of configs/sampler/<name>.yaml).

Columns: accuracy, the fraction of samples classified as the requested class, mean ± standard deviation over
`--seeds` (the spread of sampling noise, not of training); worst class, the class whose accuracy (mean over the
seeds) is lowest, and that accuracy; NFE, the sampler's count of eps_fn calls per batch as the sampler reports
it — at a guidance scale other than 0 and 1 each call runs the network once on a doubled batch (conditional and
null label together), so the network's work per call is about twice that of an unguided call of the same NFE;
wall, seconds to draw all 10 × per-class samples of one seed (sampling and decoding, not the classifier, on
`--threads` CPU threads), mean over the seeds; digits-FD, the Fréchet distance of the classifier's 64
penultimate features between the pooled samples of a seed (all classes) and the 360-image test split
(`lsgm.metrics.quality.sample_quality`, as nfe_vs_quality.py reports it), mean ± std over the seeds.

How to read it: the reference row is real digits: its accuracy is the classifier's on the test split (it
errs on real digits too, so a perfect model would score about this, not 1), and its digits-FD is that of as
many train images as samples per seed (drawn per seed, without replacement) against the test split, the floor a
perfect model reaches at this sample count. Accuracy should rise with w while the FD eventually worsens (guidance
trades diversity for fidelity); the worst class shows whether a high mean hides a class the model cannot
draw. Differences within about two standard deviations between rows are not resolved by these seeds.

Writes `class_conditioning.csv` (with every class's accuracy) and `class_conditioning.md` into `--out` (default:
<run folder>/eval, the run folder being the checkpoint's folder's parent) and prints the table as rows come.

Measured: see the README, "The score prior over all of the latents" (this table at the default 1000-step budget).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from nfe_vs_quality import NFERecorder, Report, SweepEntry, expand_sweep, markdown_row, measure_reference, write_csv

import lsgm
from lsgm.checkpoint import CheckpointError
from lsgm.cli import sampler_defaults
from lsgm.data import load_dataset
from lsgm.metrics.digits_classifier import DigitsNet, load_digits_classifier
from lsgm.metrics.features import WeightsError
from lsgm.metrics.quality import class_probabilities, sample_quality
from lsgm.sample import draw
from sde.sampling import NonFiniteError

PROGRAM = "class_conditioning"
NUM_CLASSES = 10
DEFAULT_SAMPLERS = ("dpm2m:steps=20", "heun:steps=10")
COLUMNS = ("guidance", "sampler", "options", "nfe", "wall_s", "accuracy", "accuracy_std", "worst_class",
           "worst_class_accuracy", "digits_fd", "digits_fd_std", "samples_per_seed", "seeds", "class_accuracies")
HEADERS = ("guidance", "sampler", "options", "NFE", "wall (s)", "accuracy", "worst class", "digits-FD", "samples")
REFERENCE = "real digits"


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a class-conditional digits checkpoint (…/checkpoints/best.pt)")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 4.0], help="guidance scales w")
    parser.add_argument("--samplers", nargs="+", default=list(DEFAULT_SAMPLERS), metavar="ENTRY",
                        help=f"name[:key=value,...] entries (default: {' '.join(DEFAULT_SAMPLERS)})")
    parser.add_argument("--per-class", type=int, default=100, help="samples of each class per seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampling seeds")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <run folder>/eval)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=256)
    arguments = parser.parse_args(argv)
    try:
        arguments.sweep = expand_sweep(arguments.samplers)
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    if arguments.per_class < 1:
        parser.error("--per-class must be at least 1")
    return arguments


def load_class_model(path: Path):
    """The checkpoint's model, or exit with one line if it is unreadable or not a class-conditional digits model."""
    try:
        model = lsgm.load(path)
    except CheckpointError as error:
        raise SystemExit(f"{PROGRAM}: error: {error}") from None
    condition = model.condition
    if condition is None or getattr(condition, "kind", None) != "class":
        raise SystemExit(f"{PROGRAM}: error: {path} was not trained with class labels; train with "
                         "experiment=digits_class or experiment=digits_class_pixel")
    if model.config.data.name != "digits" or condition.num_classes != NUM_CLASSES:
        raise SystemExit(f"{PROGRAM}: error: the digits classifier needs a model of the 10 digits classes; {path} "
                         f"was trained on {model.config.data.name} with {condition.num_classes} classes")
    return model


def load_classifier() -> DigitsNet:
    try:
        return load_digits_classifier()
    except (WeightsError, FileNotFoundError) as error:
        raise SystemExit(f"{PROGRAM}: error: {error}") from None


def requested_labels(per_class: int) -> torch.Tensor:
    """0, 0, …, 1, 1, …, 9: `per_class` of each class."""
    return torch.arange(NUM_CLASSES).repeat_interleave(per_class)


def class_accuracies(predicted: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The fraction of each class's samples classified as that class (NUM_CLASSES,)."""
    correct = (predicted == labels).double()
    return torch.stack([correct[labels == label].mean() for label in range(NUM_CLASSES)])


def measure_seed(model, classifier: DigitsNet, entry: SweepEntry, guidance: float, labels: torch.Tensor, seed: int,
                 batch_size: int) -> dict:
    """One seed of one row: per-class accuracies, NFE (mean over batches), wall seconds and digits-FD."""
    recorder = NFERecorder(model)
    options = {**sampler_defaults(entry.sampler), **entry.options}
    start = time.perf_counter()
    images, _ = draw(recorder, len(labels), entry.sampler, options, batch_size=batch_size, seed=seed, y=labels,
                     guidance=guidance)
    wall = time.perf_counter() - start
    predicted = class_probabilities(classifier, images).argmax(1)
    fd = sample_quality(images, data="digits", digits_classifier=classifier)["digits_fd"]
    return {"class_accuracies": class_accuracies(predicted, labels), "nfe": sum(recorder.nfes) / len(recorder.nfes),
            "wall_s": wall, "digits_fd": fd}


def mean_and_std(values: list[float]) -> tuple[float, float | None]:
    """The mean and the sample standard deviation (None for a single value)."""
    numbers = torch.tensor(values, dtype=torch.float64)
    return numbers.mean().item(), numbers.std().item() if len(values) > 1 else None


def summarize(per_seed: list[dict], seeds: list[int]) -> dict:
    """A row's accuracy and FD as mean ± std over the seeds; the worst class by its accuracy averaged over seeds."""
    accuracies = torch.stack([result["class_accuracies"] for result in per_seed])  # (seeds, classes)
    accuracy, accuracy_std = mean_and_std(accuracies.mean(1).tolist())
    fd, fd_std = mean_and_std([result["digits_fd"] for result in per_seed])
    by_class = accuracies.mean(0)
    worst = int(by_class.argmin())
    return {"nfe": mean_and_std([result["nfe"] for result in per_seed])[0],
            "wall_s": mean_and_std([result["wall_s"] for result in per_seed])[0],
            "accuracy": accuracy, "accuracy_std": accuracy_std, "worst_class": worst,
            "worst_class_accuracy": by_class[worst].item(), "digits_fd": fd, "digits_fd_std": fd_std,
            "seeds": " ".join(map(str, seeds)), "class_accuracies": " ".join(f"{value:.4f}" for value in by_class)}


def measure_row(model, classifier, entry: SweepEntry, guidance: float, per_class: int, seeds: list[int],
                batch_size: int) -> dict:
    labels = requested_labels(per_class)
    per_seed = [measure_seed(model, classifier, entry, guidance, labels, seed, batch_size) for seed in seeds]
    return {"guidance": guidance, "sampler": entry.sampler, "options": entry.text, **summarize(per_seed, seeds),
            "samples_per_seed": len(labels)}


def measure_real_digits(classifier: DigitsNet, data_config, samples_per_seed: int, seeds: list[int]) -> dict:
    """The reference row: the classifier's accuracy on the test split; the FD of train images (one draw per seed)."""
    test = load_dataset("digits", split="test")
    predicted = class_probabilities(classifier, test.x).argmax(1)
    accuracies = class_accuracies(predicted, test.y)
    worst = int(accuracies.argmin())
    fd, fd_std = mean_and_std([measure_reference(data_config, samples_per_seed, seed)["digits_fd"] for seed in seeds])
    return {"guidance": None, "sampler": REFERENCE,
            "options": f"accuracy: {len(test)} test images; FD: {samples_per_seed} train images",
            "nfe": None, "wall_s": None, "accuracy": (predicted == test.y).double().mean().item(),
            "accuracy_std": None, "worst_class": worst, "worst_class_accuracy": accuracies[worst].item(),
            "digits_fd": fd, "digits_fd_std": fd_std, "samples_per_seed": samples_per_seed,
            "seeds": " ".join(map(str, seeds)), "class_accuracies": " ".join(f"{value:.4f}" for value in accuracies)}


def plus_minus(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return ""
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_number(value) -> str:
    if value is None:
        return ""
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.4g}"


def table_cells(row: dict) -> list[str]:
    return [format_number(row["guidance"]), row["sampler"], row["options"], format_number(row["nfe"]),
            "" if row["wall_s"] is None else f"{row['wall_s']:.1f}",
            plus_minus(row["accuracy"], row["accuracy_std"], 3),
            f"{row['worst_class']}: {row['worst_class_accuracy']:.3f}",
            plus_minus(row["digits_fd"], row["digits_fd_std"], 2), str(row["samples_per_seed"])]


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the sweep; returns the rows, the reference row first."""
    arguments = parse_arguments(argv)
    torch.set_num_threads(arguments.threads)
    model = load_class_model(arguments.checkpoint)
    classifier = load_classifier()
    out = arguments.out or arguments.checkpoint.resolve().parent.parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    samples_per_seed = NUM_CLASSES * arguments.per_class

    report = Report()
    report.add(f"{arguments.checkpoint}: {arguments.per_class} samples per class, seeds "
               f"{' '.join(map(str, arguments.seeds))}, batches of {arguments.batch_size}, {arguments.threads} "
               "thread(s); accuracy and digits-FD: mean ± std over seeds\n")
    report.add(markdown_row(HEADERS))
    report.add(markdown_row(["---:", "---", "---"] + ["---:"] * (len(HEADERS) - 3)))
    rows = [measure_real_digits(classifier, model.config.data, samples_per_seed, arguments.seeds)]
    report.add(markdown_row(table_cells(rows[0])))
    for guidance in arguments.guidance:
        for entry in arguments.sweep:
            try:
                row = measure_row(model, classifier, entry, guidance, arguments.per_class, arguments.seeds,
                                  arguments.batch_size)
            except NonFiniteError as error:
                report.add(markdown_row([format_number(guidance), entry.sampler, entry.text, f"failed: {error}"]))
                continue
            rows.append(row)
            report.add(markdown_row(table_cells(row)))
    report.add("\nNFE counts eps_fn calls; at guidance ≠ 0, 1 each runs the network on a doubled batch.")
    csv_path = write_csv(rows, out / f"{PROGRAM}.csv", COLUMNS)
    markdown_path = report.write(out / f"{PROGRAM}.md")
    print(f"wrote {csv_path} and {markdown_path}")
    return rows


if __name__ == "__main__":
    main()
