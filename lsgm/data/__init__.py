"""Datasets with their number of levels, and in-memory batching for training.

Conventions (shared by the whole package): images are float tensors in [-1, 1] of shape (N, C, H, W);
a dataset declares ``levels`` (256 for 8-bit images, 17 for sklearn digits, 2 for binary images), and
pixel value k is x = 2k / (levels - 1) - 1. ``load_dataset(name, root, split, **options)`` is the single
entry point; a missing or malformed file raises one :class:`DataError` naming the expected layout.

Modules:
    levels    pixel values k in {0..levels-1} and x in [-1, 1], both ways
    formats   the file readers: sklearn digits, MNIST IDX, CIFAR-10 python batches, image folders, .npz
    datasets  ImageDataset, the registry of readers, load_dataset and its one train/val/test split
    batching  Batch, epoch_indices, batches (one epoch), BatchStream (endless, resumable), sharded by rank
"""

from .batching import Batch, BatchStream, batches, epoch_indices
from .datasets import READERS, SPLITS, ImageDataset, load_dataset
from .errors import DataError
from .formats import PixelArrays, read_idx
from .levels import to_levels, to_unit_range

__all__ = [
    "READERS",
    "SPLITS",
    "Batch",
    "BatchStream",
    "DataError",
    "ImageDataset",
    "PixelArrays",
    "batches",
    "epoch_indices",
    "load_dataset",
    "read_idx",
    "to_levels",
    "to_unit_range",
]
