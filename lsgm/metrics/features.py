"""Pluggable feature extractors for Fréchet distances, and the batching that feeds them.

A `FeatureExtractor` maps images in [−1, 1] of shape (B, C, H, W) to features (B, F); it declares its
`name`, the `input_size` (H, W) it resizes to or requires, and `num_features` F. Implementations:
`lsgm.metrics.inception.InceptionFeatures` (pool3 of FID's Inception-v3, 2048-d, from a local weights
file) and `lsgm.metrics.digits_classifier.DigitsFeatures` (a small digits classifier, shipped).
"""

from __future__ import annotations

import abc
from pathlib import Path

import torch

from .frechet import FeatureStatistics, feature_statistics


class WeightsError(ValueError):
    """A weights file is missing or does not fit the network that should load it."""


class FeatureExtractor(abc.ABC):
    """images (B, C, H, W) in [−1, 1] -> features (B, num_features)."""

    name: str
    input_size: tuple[int, int]
    num_features: int

    @abc.abstractmethod
    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


def extract_features(extractor: FeatureExtractor, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The extractor's features of `images` (N, C, H, W), in batches, without gradients (N, F) on the CPU."""
    if images.ndim != 4:
        raise ValueError(f"expected images (N, C, H, W), got shape {tuple(images.shape)}")
    with torch.no_grad():
        return torch.cat([extractor(batch).cpu() for batch in images.split(batch_size)])


def statistics_of(extractor: FeatureExtractor, images: torch.Tensor, batch_size: int = 256) -> FeatureStatistics:
    """Mean and covariance of the extractor's features of `images`."""
    return feature_statistics(extract_features(extractor, images, batch_size))


def load_state_dict_file(path: str | Path, how_to_get: str) -> dict[str, torch.Tensor]:
    """A state dict from a local file (tensors only), or a WeightsError that says how to get the file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found; {how_to_get}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated, foreign or pickled-object file alike
        raise WeightsError(f"cannot read weights file {path} ({type(error).__name__}: {error}); {how_to_get}") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict; {how_to_get}")
    return state


def load_matching(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str,
                  ignored_prefixes: tuple[str, ...] = ()) -> None:
    """Load `state` into `module`, requiring the same keys and shapes (keys under `ignored_prefixes` are
    dropped; BatchNorm's `num_batches_tracked` may be absent, as in files saved by old torch)."""
    state = {key: value for key, value in state.items() if not key.startswith(ignored_prefixes)}
    expected = module.state_dict()
    missing = [key for key in expected if key not in state and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in state if key not in expected]
    mismatched = [f"{key} {tuple(state[key].shape)} vs {tuple(expected[key].shape)}"
                  for key in state if key in expected and state[key].shape != expected[key].shape]
    if missing or unexpected or mismatched:
        problems = {"missing": missing, "unexpected": unexpected, "wrong shape (file vs network)": mismatched}
        details = "; ".join(f"{kind} ({len(keys)}): {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                            for kind, keys in problems.items() if keys)
        raise WeightsError(f"{source} does not match {type(module).__name__}: {details}")
    module.load_state_dict(state, strict=False)
