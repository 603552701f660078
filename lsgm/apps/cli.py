"""What the application commands share: the checkpoint's model on a device and its dataset's images."""

from __future__ import annotations

import torch

from lsgm import cli
from lsgm.build import load, load_splits


def load_model(path: str, device: str = "auto"):
    """The checkpoint's model (EMA weights, eval mode) on `device` (auto: CUDA if available), checked first."""
    return load(path, cli.device(device))


def dataset_images(model, split: str) -> torch.Tensor:
    """The images of a split of the checkpoint's dataset (`model.config.data`), on the model's device."""
    return load_splits(model.config.data)[split].x.to(next(model.parameters()).device)
