"""The dataset: an in-memory :class:`ImageDataset`, the registry of formats, and :func:`load_dataset` with
its one train/val/test split.

The split of every dataset: the format's fixed train/test partition (see :mod:`lsgm.data.formats`), and
``val`` = the last ``round(val_fraction * n_train)`` examples of the train partition, which the ``train``
split then excludes. For sklearn digits (1797 images; 1437 train, 360 test) with the default
``val_fraction=0.1``: 1293 train, 144 val, 360 test.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable
from pathlib import Path

import torch

from . import checks
from .errors import DataError
from .formats import PixelArrays, read_cifar10, read_digits, read_folder, read_mnist, read_npz
from .levels import to_unit_range

SPLITS = ("train", "val", "test")

READERS: dict[str, Callable[..., PixelArrays]] = {
    "digits": read_digits,
    "mnist": read_mnist,
    "cifar10": read_cifar10,
    "folder": read_folder,
    "npz": read_npz,
}


@dataclasses.dataclass
class ImageDataset:
    """An in-memory image dataset.

    ``x``: float tensor (N, C, H, W), images in [-1, 1]; ``y``: int64 labels (N,) or None; ``levels``: the
    number of pixel levels (see :mod:`lsgm.data.levels`); ``num_classes``: the number of label classes or
    None; ``random_flip``: a training stream (:class:`~lsgm.data.batching.BatchStream`) mirrors each image
    left-right with probability 1/2.
    """

    x: torch.Tensor
    y: torch.Tensor | None
    levels: int
    name: str
    split: str
    num_classes: int | None = None
    random_flip: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one image, (C, H, W)."""
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: torch.device | str) -> ImageDataset:
        """The same dataset with its tensors on ``device`` (move once, then batch without copies)."""
        labels = None if self.y is None else self.y.to(device)
        return dataclasses.replace(self, x=self.x.to(device), y=labels)


def load_dataset(
    name: str = "digits",
    root: str | Path | None = None,
    split: str = "train",
    val_fraction: float = 0.1,
    random_flip: bool = False,
    **options,
) -> ImageDataset:
    """Load split ``train``, ``val`` or ``test`` of dataset ``name``.

    ``digits`` needs no root; ``mnist`` and ``cifar10`` take root = the folder of the original files,
    ``folder`` the image folder, ``npz`` the .npz file. ``val`` is the last ``round(val_fraction * n_train)``
    examples of the train partition and ``train`` the rest (``val_fraction=0`` keeps the whole train
    partition). ``options`` go to the format's reader (``READERS[name]``, e.g. ``binarize`` of
    :func:`~lsgm.data.formats.read_mnist`); an unknown name, split or option raises DataError. ``random_flip``
    (a data config's ``options: {random_flip: true}``, LSGM's CIFAR-10 recipe) marks the train split for random
    horizontal flips in its training stream; val and test are never flipped.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if not isinstance(name, str) or name not in READERS:
        raise DataError(f"unknown dataset {name!r}; expected one of {', '.join(READERS)}")
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise DataError(f"{name}: root must be a path, got {root!r}")
    checks.fraction(val_fraction, "val_fraction", upper_open=True)
    checks.boolean(random_flip, "random_flip")
    partition = "test" if split == "test" else "train"
    arrays = _call_with_options(READERS[name], name, Path(root) if root is not None else None, partition, **options)
    rows = _split_rows(len(arrays.pixels), split, val_fraction)
    labels = None if arrays.labels is None else torch.as_tensor(arrays.labels[rows], dtype=torch.int64)
    return ImageDataset(
        x=to_unit_range(arrays.pixels[rows], arrays.levels),
        y=labels,
        levels=arrays.levels,
        name=name,
        split=split,
        num_classes=arrays.num_classes,
        random_flip=random_flip and split == "train",
    )


def _call_with_options(function: Callable, name: str, *arguments, **options):
    """Call ``function(*arguments, **options)``, turning unknown options into a DataError."""
    signature = inspect.signature(function)
    try:
        signature.bind(*arguments, **options)
    except TypeError as error:
        accepted = list(signature.parameters)[len(arguments) :]
        raise DataError(f"{name}: {error}; accepted options: {', '.join(accepted) or 'none'}") from None
    return function(*arguments, **options)


def _split_rows(num_rows: int, split: str, val_fraction: float) -> slice:
    """Rows of a loaded partition that belong to ``split``: the val split is the last
    round(val_fraction * n) rows of the train partition, the train split the rows before them."""
    if split == "test":
        return slice(None)
    num_val = round(val_fraction * num_rows)
    if split == "val" and num_val == 0:
        raise DataError(f"the val split is empty (val_fraction={val_fraction}); set val_fraction > 0")
    boundary = num_rows - num_val
    return slice(boundary, None) if split == "val" else slice(0, boundary)
