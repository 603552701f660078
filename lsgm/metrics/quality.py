"""Sample quality from tensors or from a .npz of samples: Fréchet distances and class statistics.

    python -m lsgm.metrics.quality samples.npz --data digits [--inception-weights pt_inception-...pth] [--json out.json]

The .npz holds integer images (N, C, H, W) in 0..levels − 1 (under 'x' or 'images', else its first array;
the layout `python -m lsgm.sample` writes and `lsgm.data` reads), with `levels` stored in the file or taken
from the reference dataset. References are the dataset's test split. Reported:

- digits_fd (data=digits): Fréchet distance of the digits classifier's penultimate features;
- class_diversity_nats = H(p̄), the entropy of the mean predicted class distribution p̄ = mean_n p(y | x_n)
  (at most log 10 = 2.303 when all classes are equally frequent), and class_confidence_entropy_nats =
  mean_n H(p(y | x_n)), the mean per-sample predictive entropy (0 when each sample is classified with
  certainty) — both without labels, from the same classifier;
- inception_fd (when a weights file is given): FID with FID's Inception-v3 pool3 features.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
from pathlib import Path

import torch

from lsgm import cli
from lsgm.data import READERS, ImageDataset, load_dataset

from .digits_classifier import DigitsFeatures, DigitsNet, check_digit_images, load_digits_classifier
from .features import FeatureExtractor, statistics_of
from .frechet import frechet_distance
from .inception import InceptionFeatures


def class_statistics(probabilities: torch.Tensor) -> dict[str, float]:
    """H(p̄) (diversity) and mean_n H(p_n) (confidence) in nats, for class probabilities (N, K)."""
    mean_distribution = probabilities.double().mean(0)
    return {"class_diversity_nats": entropy(mean_distribution).item(),
            "class_confidence_entropy_nats": entropy(probabilities.double()).mean().item()}


def entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """H(p) = −Σ_k p_k log p_k over the last axis (0 log 0 = 0)."""
    return -torch.special.xlogy(probabilities, probabilities).sum(-1)


@torch.no_grad()
def class_probabilities(classifier: DigitsNet, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """softmax of the classifier's logits (N, 10)."""
    check_digit_images(images)
    return torch.cat([classifier(batch.float()).softmax(1) for batch in images.split(batch_size)])


def frechet_distance_to(extractor: FeatureExtractor, images: torch.Tensor, reference: torch.Tensor,
                        batch_size: int = 64) -> float:
    """Fréchet distance between the extractor's feature statistics of `images` and of `reference`."""
    samples_statistics = statistics_of(extractor, images, batch_size)
    return frechet_distance(samples_statistics, statistics_of(extractor, reference, batch_size))


@functools.lru_cache(maxsize=4)
def reference_split(data: str, root: str | Path | None = None) -> ImageDataset:
    """The reference: dataset `data`'s test split (loaded once per process; do not modify it)."""
    return load_dataset(data, root, split="test")


def sample_quality(
    images: torch.Tensor,
    data: str = "digits",
    root: str | Path | None = None,
    inception_weights: str | Path | None = None,
    digits_classifier: DigitsNet | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Quality metrics of `images` (N, C, H, W) in [−1, 1] against the test split of dataset `data`.

    digits_fd and the class statistics for data="digits" (with the shipped classifier unless one is
    given; on the CPU); inception_fd when `inception_weights` names a local FID Inception file (on `device`).
    """
    images = images.detach().to("cpu", torch.float32)
    reference = reference_split(data, root).x
    if tuple(images.shape[1:]) != tuple(reference.shape[1:]):
        raise ValueError(f"samples have shape {tuple(images.shape[1:])} but {data} images have "
                         f"{tuple(reference.shape[1:])}")
    results: dict[str, float] = {"num_samples": float(len(images))}
    if data == "digits":
        classifier = load_digits_classifier() if digits_classifier is None else digits_classifier
        results["digits_fd"] = frechet_distance_to(DigitsFeatures(classifier), images, reference, batch_size=1024)
        results |= class_statistics(class_probabilities(classifier, images))
    if inception_weights is not None:
        results["inception_fd"] = frechet_distance_to(InceptionFeatures(inception_weights, device), images, reference)
    return results


def load_samples(path: str | Path, levels: int | None = None) -> torch.Tensor:
    """Images in [−1, 1] from a .npz of integer samples in 0..levels − 1 (`levels` from the file or given)."""
    return load_dataset("npz", path, split="train", val_fraction=0, levels=levels, test_fraction=0).x


def npz_sample_quality(path: str | Path, data: str = "digits", root: str | Path | None = None,
                       **options) -> dict[str, float]:
    """`sample_quality` of the samples in a .npz; missing levels are taken from dataset `data`."""
    levels = reference_split(data, root).levels
    return sample_quality(load_samples(path, levels), data, root, **options)


def format_table(results: dict[str, float]) -> str:
    width = max(map(len, results))
    return "\n".join(f"{name:<{width}}  {value:.6g}" for name, value in results.items())


PROGRAM = "lsgm.metrics.quality"


def main(argv: list[str] | None = None) -> None:
    """The command (module docstring); exit status as `lsgm.cli`'s (0 done, 2 bad input, 4 interrupted)."""
    parser = argparse.ArgumentParser(prog=PROGRAM, description="Sample quality of a .npz of integer samples.")
    parser.add_argument("samples", type=Path, help=".npz with integer images (N, C, H, W) in 0..levels-1")
    parser.add_argument("--data", default="digits", help="reference dataset (its test split)")
    parser.add_argument("--root", default=None, help="the reference dataset's files, if it needs any")
    parser.add_argument("--inception-weights", default=None, help="local pt_inception-2015-12-05-6726825d.pth")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    arguments = parser.parse_args(argv)
    with cli.reporting_errors(PROGRAM):
        run(arguments)


def check_arguments(arguments: argparse.Namespace) -> None:
    """The command's arguments, before any work (a one-line error naming the fix)."""
    if not arguments.samples.is_file():
        raise cli.UsageError(f"{arguments.samples} is not a file; give the .npz that python -m lsgm.sample wrote")
    cli.choice(arguments.data, tuple(READERS), "--data")
    if arguments.inception_weights is not None and not Path(arguments.inception_weights).is_file():
        raise cli.UsageError(f"--inception-weights {arguments.inception_weights} is not a file; give the local "
                             "pt_inception-2015-12-05-6726825d.pth or leave it out")
    if arguments.json is not None:
        cli.writable(arguments.json, "--json")


def run(arguments: argparse.Namespace) -> None:
    """Measure and print (and write, with --json) the quality of the samples for parsed arguments."""
    check_arguments(arguments)
    device = cli.device(arguments.device, "--device")
    results = npz_sample_quality(arguments.samples, arguments.data, arguments.root,
                                 inception_weights=arguments.inception_weights, device=device)
    print(format_table(results))
    if arguments.data == "digits":
        print(f"(class diversity is at most log 10 = {math.log(10):.3f} nats)")
    if arguments.json is not None:
        arguments.json.parent.mkdir(parents=True, exist_ok=True)
        arguments.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
