"""In-memory batching for training, sharded over ranks.

Every dataset is kept in memory (it fits in host or GPU memory at the sizes this library targets):
:func:`batches` serves one epoch, :class:`BatchStream` an endless, resumable stream for step-based
training. Both shard the epoch's order over ``world_size`` ranks the way ``DistributedSampler`` does, so
the same code serves one CPU process and torchrun.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch

from . import checks
from .datasets import ImageDataset
from .errors import DataError


class Batch(NamedTuple):
    """A batch of examples ``x`` and their labels ``y`` (None for unlabelled data)."""

    x: torch.Tensor
    y: torch.Tensor | None


def epoch_indices(
    num_examples: int,
    epoch: int,
    seed: int = 0,
    shuffle: bool = True,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
) -> torch.Tensor:
    """The example indices rank ``rank`` visits in epoch ``epoch`` (DistributedSampler's recipe).

    The order is ``default_rng([seed, epoch]).permutation(n)`` (or 0..n-1 without shuffle), the same
    on every rank; it is cut to a multiple of ``world_size`` (drop_last) or wrapped round to one, so
    every rank gets the same count, and rank r takes positions r, r + world_size, ...
    """
    checks.integer_in(world_size, "world_size", 1)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    else:
        order = np.arange(num_examples)
    if drop_last:
        order = order[: num_examples - num_examples % world_size]
    else:
        order = np.resize(order, math.ceil(num_examples / world_size) * world_size)
    return torch.from_numpy(order[rank::world_size].copy())


def batches(
    dataset: ImageDataset,
    batch_size: int,
    shuffle: bool = True,
    drop_last: bool = False,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[Batch]:
    """One epoch of batches of this rank's share (see :func:`epoch_indices`), sliced from the
    in-memory tensors on their device; ``drop_last`` also drops the last incomplete batch."""
    checks.integer_in(batch_size, "batch_size", 1)
    order = epoch_indices(len(dataset), epoch, seed, shuffle, rank, world_size, drop_last)
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    for start in range(0, stop, batch_size):
        rows = order[start : start + batch_size].to(dataset.x.device)
        yield Batch(dataset.x[rows], None if dataset.y is None else dataset.y[rows])


FLIP_STREAM = 0x666C6970  # "flip": keeps the flips' seeds apart from the epoch orders' [seed, epoch]


def flip_horizontally(x: torch.Tensor, generator: np.random.Generator, probability: float = 0.5) -> torch.Tensor:
    """x (N, C, H, W) with each image mirrored along its width with `probability`, drawn from `generator`."""
    flip = torch.from_numpy(generator.random(x.shape[0]) < probability).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


class BatchStream:
    """An endless, resumable stream of shuffled full batches for step-based training.

    Epoch e serves ``batches(dataset, batch_size, shuffle=True, drop_last=True, seed, epoch=e, rank,
    world_size)``, then epoch e + 1 begins. The order depends only on (seed, epoch), so
    ``state_dict()`` = {"epoch", "position"} (position: batches already served this epoch) is all a
    checkpoint needs; ``load_state_dict`` continues the same sequence of batches.

    A dataset with ``random_flip`` has each image of a batch mirrored left-right (the width axis) with
    probability 1/2, drawn from a generator seeded by (seed, epoch, position, rank) alone, so a resumed stream
    serves the same flipped batches too.
    """

    def __init__(
        self, dataset: ImageDataset, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1
    ):
        checks.integer_in(batch_size, "batch_size", 1)
        checks.integer_in(world_size, "world_size", 1)
        if len(dataset) // world_size < batch_size:
            raise DataError(f"{dataset.name}: {len(dataset)} examples over {world_size} rank(s) give no full "
                            f"batch of {batch_size}; lower the batch size")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.position = 0
        self._epoch_batches: Iterator[Batch] | None = None

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Batch:
        if self._epoch_batches is None:
            epoch_batches = batches(
                self.dataset, self.batch_size, shuffle=True, drop_last=True, seed=self.seed, epoch=self.epoch,
                rank=self.rank, world_size=self.world_size,
            )
            self._epoch_batches = itertools.islice(epoch_batches, self.position, None)
        batch = next(self._epoch_batches, None)
        if batch is None:
            self.epoch, self.position, self._epoch_batches = self.epoch + 1, 0, None
            return next(self)
        if self.dataset.random_flip:
            batch = Batch(flip_horizontally(batch.x, self._flip_generator()), batch.y)
        self.position += 1
        return batch

    def _flip_generator(self) -> np.random.Generator:
        """The flips' generator of the batch about to be served: its own stream (FLIP_STREAM) of this rank at
        (seed, epoch, position), apart from the epoch's order."""
        return np.random.default_rng([self.seed, self.epoch, self.position, self.rank, FLIP_STREAM])

    def state_dict(self) -> dict[str, int]:
        """Where the stream stands: the epoch, and how many of its batches were served."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a state returned by :meth:`state_dict`."""
        self.epoch, self.position, self._epoch_batches = int(state["epoch"]), int(state["position"]), None
