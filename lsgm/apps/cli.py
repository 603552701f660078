"""What the application commands share: `key=value` arguments, the checkpoint's model, its dataset's images."""

from __future__ import annotations

import contextlib

import torch
from omegaconf import DictConfig, OmegaConf

from lsgm.build import load, plain
from lsgm.checkpoint import CheckpointError
from lsgm.data import load_dataset


def parse(argv: list[str], defaults: dict, usage: str) -> DictConfig:
    """`key=value` arguments (OmegaConf.from_cli, lists as `key=[a,b]`) over `defaults`; `ckpt` is required.

    An unknown key or a missing ckpt exits with a message naming the valid keys and the usage."""
    given = OmegaConf.from_cli(argv)
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise SystemExit(f"unknown argument(s) {', '.join(unknown)}; valid keys: {', '.join(defaults)}\n{usage}")
    cfg = OmegaConf.merge(OmegaConf.create(defaults), given)
    if cfg.ckpt is None:
        raise SystemExit(f"give the checkpoint: ckpt=PATH\n{usage}")
    return cfg


@contextlib.contextmanager
def user_errors():
    """Turn the errors a user's arguments cause (a bad checkpoint, mask, step count, file) into one message and
    exit status 1, instead of a traceback."""
    try:
        yield
    except (CheckpointError, ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None


def load_model(path: str, device: str = "auto"):
    """The checkpoint's model (EMA weights, eval mode) on `device` (auto: CUDA if available)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return load(path, device)


def dataset_images(model, split: str) -> torch.Tensor:
    """The images of a split of the checkpoint's dataset (`model.config.data`), on the model's device."""
    data = plain(model.config.data)
    dataset = load_dataset(data["name"], root=data.get("root"), split=split, val_fraction=data.get("val_fraction", 0.1),
                           **data.get("options", {}))
    return dataset.x.to(next(model.parameters()).device)
