"""Datasets with their number of levels, and in-memory batching for training.

Conventions (shared by the whole package):

- images are float tensors in [-1, 1] of shape (N, C, H, W);
- a dataset declares ``levels``: 256 for 8-bit images, 17 for sklearn digits, 2 for binary images,
  ``None`` for continuous toy data;
- pixel value k in {0, ..., levels - 1} is x = 2k / (levels - 1) - 1 (:func:`to_unit_range`), and back
  by rounding and clamping (:func:`to_levels`).

``load_dataset(name, root, split, **options)`` is the single entry point. Image sets (``digits``,
``mnist``, ``cifar10``, ``folder``, ``npz``) have a fixed train/test partition; the ``val`` split is the
last ``val_fraction`` of the train partition, which the ``train`` split then excludes. Toy sets
(``gaussian_mixture``, ``gaussian``, ``checkerboard``, ``two_moons``) sample ``num_samples`` points per
split from a distribution kept on the dataset (``dataset.distribution``), most with an exact
``log_prob``.

A missing or malformed file raises one :class:`DataError` naming the expected layout.

Batching keeps every dataset in memory (a dataset fits in host or GPU memory at the sizes this
library targets): :func:`batches` serves one epoch, :class:`BatchStream` an endless, resumable stream
for step-based training. Both shard the epoch's order over ``world_size`` ranks the way
``DistributedSampler`` does, so the same code serves one CPU process and torchrun.
"""

from __future__ import annotations

import dataclasses
import gzip
import inspect
import itertools
import math
import pickle
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from sde.gaussian import GaussianMixture
from sde.gaussian import gaussian as gaussian_distribution

SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """A dataset name, option, path or file a user gave is missing or malformed."""


# --------------------------------------------------------------------------------------------------
# Pixel levels


def to_unit_range(k: torch.Tensor | np.ndarray, levels: int) -> torch.Tensor:
    """Map integer pixel values k in {0..levels-1} to x = 2k / (levels - 1) - 1 (float32, in [-1, 1])."""
    return torch.as_tensor(k).to(torch.float32) * (2.0 / (levels - 1)) - 1.0


def to_levels(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Map x in [-1, 1] to the nearest pixel value k = round((x + 1)(levels - 1) / 2), clamped to
    {0..levels-1}, as an int64 tensor."""
    return torch.round((x + 1.0) * ((levels - 1) / 2.0)).clamp(0, levels - 1).to(torch.int64)


# --------------------------------------------------------------------------------------------------
# The dataset


@dataclasses.dataclass
class ImageDataset:
    """An in-memory dataset.

    ``x``: float tensor (N, *shape), images in [-1, 1] (or raw points for toy sets);
    ``y``: int64 labels (N,) or None; ``levels``: number of pixel levels, None if continuous;
    ``num_classes``: number of label classes or None; ``distribution``: the toy distribution the
    points were drawn from (``sample``, and ``log_prob`` where exact), None for image sets.
    """

    x: torch.Tensor
    y: torch.Tensor | None
    levels: int | None
    name: str
    split: str
    num_classes: int | None = None
    distribution: object | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one example: (C, H, W) for images, (D,) for toy points."""
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: torch.device | str) -> ImageDataset:
        """The same dataset with its tensors on ``device`` (move once, then batch without copies)."""
        labels = None if self.y is None else self.y.to(device)
        return dataclasses.replace(self, x=self.x.to(device), y=labels)


class PixelArrays(NamedTuple):
    """What an image loader returns for one partition: integer pixels (N, C, H, W) in
    {0..levels-1}, labels (N,) or None, the number of levels, the number of classes or None."""

    pixels: np.ndarray
    labels: np.ndarray | None
    levels: int
    num_classes: int | None


def load_dataset(
    name: str = "digits",
    root: str | Path | None = None,
    split: str = "train",
    val_fraction: float = 0.1,
    **options,
) -> ImageDataset:
    """Load split ``train``, ``val`` or ``test`` of dataset ``name``.

    Image sets: ``digits`` (no root), ``mnist`` and ``cifar10`` (root = folder of the original files),
    ``folder`` (root = image folder), ``npz`` (root = the .npz file). ``val`` is the last
    ``round(val_fraction * n_train)`` examples of the train partition and ``train`` the rest
    (``val_fraction=0`` keeps the whole train partition). Toy sets ignore ``root`` and
    ``val_fraction`` and draw each split independently. ``options`` go to the dataset's loader (see
    ``_load_<name>`` and the toy factories); an unknown name, split or option raises DataError.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if name in TOY_DISTRIBUTIONS:
        return _toy_dataset(name, split, **options)
    if name not in IMAGE_LOADERS:
        known = ", ".join([*IMAGE_LOADERS, *TOY_DISTRIBUTIONS])
        raise DataError(f"unknown dataset {name!r}; expected one of {known}")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    loader = IMAGE_LOADERS[name]
    partition = "test" if split == "test" else "train"
    arrays = _call_with_options(loader, name, Path(root) if root is not None else None, partition, **options)
    rows = _split_rows(len(arrays.pixels), split, val_fraction)
    labels = None if arrays.labels is None else torch.as_tensor(arrays.labels[rows], dtype=torch.int64)
    return ImageDataset(
        x=to_unit_range(arrays.pixels[rows], arrays.levels),
        y=labels,
        levels=arrays.levels,
        name=name,
        split=split,
        num_classes=arrays.num_classes,
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


def _fixed_partition(num_examples: int, num_test: int, partition: str) -> np.ndarray:
    """Indices of a fixed train/test partition: ``perm = default_rng(0).permutation(n)``,
    train = perm[:n - num_test], test = perm[n - num_test:]."""
    permutation = np.random.default_rng(0).permutation(num_examples)
    boundary = num_examples - num_test
    return permutation[boundary:] if partition == "test" else permutation[:boundary]


def _num_classes(labels: np.ndarray | None) -> int | None:
    """1 + the largest label, or None without labels."""
    return None if labels is None or len(labels) == 0 else int(labels.max()) + 1


# --------------------------------------------------------------------------------------------------
# Files


def _listing(directory: Path) -> str:
    """A short description of what a directory holds, for error messages."""
    if not directory.is_dir():
        return "the directory does not exist"
    names = sorted(path.name for path in directory.iterdir())
    if not names:
        return "nothing (empty directory)"
    shown = ", ".join(names[:12])
    return shown + (f", … ({len(names)} entries)" if len(names) > 12 else "")


def _find_file(root: Path | None, candidates: list[str], dataset: str, layout: str) -> Path:
    """The first of ``root / candidate`` that exists; a DataError naming ``layout`` otherwise."""
    if root is None:
        raise DataError(f"{dataset}: no root given; pass root=<folder holding {layout}>")
    for candidate in candidates:
        if (root / candidate).is_file():
            return root / candidate
    raise DataError(f"{dataset}: expected {layout} in {root}; found: {_listing(root)}")


def _read_bytes(path: Path) -> bytes:
    """The contents of ``path``, decompressed if its name ends in .gz."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                return stream.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: cannot read the file ({error})") from None


IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (raw or .gz), the format of the MNIST files.

    Layout: a 4-byte magic number (two zero bytes, a type code — 0x08 unsigned byte, 0x09 signed
    byte, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64 — and the number of dimensions n), then
    n big-endian uint32 sizes, then the values in row-major order, big-endian.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (magic number {raw[:4].hex() or 'missing'}; expected "
                        "00 00 <type code> <number of dims>, e.g. 00000803 for MNIST images)")
    num_dims = raw[3]
    header_size = 4 + 4 * num_dims
    if len(raw) < header_size:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header_size})")
    dims = struct.unpack(f">{num_dims}I", raw[4:header_size])
    dtype = np.dtype(IDX_TYPES[raw[2]])
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header_size != expected:
        raise DataError(f"{path}: the header announces shape {dims} ({expected} bytes of data) but the file "
                        f"holds {len(raw) - header_size}; the file is truncated or corrupt")
    return np.frombuffer(raw, dtype, offset=header_size).reshape(dims).astype(dtype.newbyteorder("="))


# --------------------------------------------------------------------------------------------------
# Image loaders: (root, partition, **options) -> PixelArrays, partition in {"train", "test"}


def _load_digits(root: Path | None, partition: str) -> PixelArrays:
    """sklearn's 8x8 digits (1797 images, values 0..16 so 17 levels, 10 classes), shipped with
    scikit-learn: ``root`` is ignored. Fixed partition: 1437 train, 360 test (see _fixed_partition)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows = _fixed_partition(len(digits.images), 360, partition)
    pixels = digits.images[rows].astype(np.uint8)[:, None]
    return PixelArrays(pixels, digits.target[rows].astype(np.int64), levels=17, num_classes=10)


MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
BINARIZE_MODES = (None, "threshold", "stochastic")
MNIST_LAYOUT = ("train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz] "
                "and t10k-labels-idx1-ubyte[.gz] (directly or under MNIST/raw/)")


def _load_mnist(
    root: Path | None,
    partition: str,
    binarize: str | None = None,
    threshold: float = 0.5,
    seed: int = 0,
    pad_to_32: bool = False,
) -> PixelArrays:
    """MNIST from its four IDX files (raw or .gz) in ``root`` or ``root/MNIST/raw``: 28x28 grey, 256
    levels, 10 classes; 60000 train, 10000 test.

    ``binarize``: None (256 levels), ``"threshold"`` (pixel = intensity/255 > threshold) or
    ``"stochastic"`` (pixel ~ Bernoulli(intensity/255), drawn once from ``seed``), both 2 levels.
    ``pad_to_32``: pad with 2 background pixels on each side to 32x32.
    """
    if binarize not in BINARIZE_MODES:
        raise DataError(f"MNIST: unknown binarize={binarize!r}; expected one of {BINARIZE_MODES}")
    images_name, labels_name = MNIST_FILES[partition]
    images = _read_mnist_file(root, images_name, num_dims=3)
    labels = _read_mnist_file(root, labels_name, num_dims=1)
    if len(images) != len(labels):
        raise DataError(f"MNIST: {images_name} holds {len(images)} images but {labels_name} "
                        f"{len(labels)} labels in {root}")
    pixels, levels = _binarize(images, binarize, threshold, seed, partition)
    if pad_to_32:
        pixels = np.pad(pixels, ((0, 0), (2, 2), (2, 2)))
    return PixelArrays(pixels[:, None], labels.astype(np.int64), levels=levels, num_classes=10)


def _read_mnist_file(root: Path | None, name: str, num_dims: int) -> np.ndarray:
    """One MNIST IDX file, checked to hold unsigned bytes with ``num_dims`` dimensions."""
    candidates = [name, name + ".gz", f"MNIST/raw/{name}", f"MNIST/raw/{name}.gz"]
    path = _find_file(root, candidates, "MNIST", MNIST_LAYOUT)
    array = read_idx(path)
    if array.dtype != np.uint8 or array.ndim != num_dims:
        raise DataError(f"{path}: expected unsigned bytes with {num_dims} dims (magic number 000008"
                        f"0{num_dims}), got {array.dtype} with shape {array.shape}")
    return array


def _binarize(intensities: np.ndarray, mode: str | None, threshold: float, seed: int, partition: str):
    """8-bit intensities as (pixels, levels): unchanged with 256 levels, or binarised with 2 by
    threshold or by one Bernoulli draw seeded from (seed, partition)."""
    if mode is None:
        return intensities, 256
    unit = intensities / 255.0
    if mode == "threshold":
        return (unit > threshold).astype(np.uint8), 2
    generator = np.random.default_rng([seed, SPLITS.index(partition)])
    return (generator.random(unit.shape) < unit).astype(np.uint8), 2


CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR_LAYOUT = "data_batch_1 … data_batch_5 and test_batch (directly or under cifar-10-batches-py/)"


def _load_cifar10(root: Path | None, partition: str) -> PixelArrays:
    """CIFAR-10 from its python batches in ``root`` or ``root/cifar-10-batches-py``: each a pickled
    dict with b'data' (uint8, N x 3072, the red, green then blue 32x32 planes) and b'labels'
    (N ints in 0..9). 32x32 RGB, 256 levels, 10 classes; 50000 train, 10000 test."""
    parts = [_read_cifar_batch(root, name) for name in CIFAR_FILES[partition]]
    pixels = np.concatenate([data for data, _ in parts]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([labels for _, labels in parts])
    return PixelArrays(pixels, labels, levels=256, num_classes=10)


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays and plain containers and refuses anything else."""

    ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(root: Path | None, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(data uint8 (N, 3072), labels int64 (N,)) from one CIFAR-10 python batch."""
    path = _find_file(root, [name, f"cifar-10-batches-py/{name}"], "CIFAR-10", CIFAR_LAYOUT)
    try:
        with open(path, "rb") as stream:
            batch = _ArrayUnpickler(stream, encoding="bytes").load()
        data = np.asarray(batch.get(b"data", batch.get("data")))
        labels = np.asarray(batch.get(b"labels", batch.get("labels")), dtype=np.int64)
    except Exception as error:  # any failure to unpickle means a corrupt or foreign file
        raise DataError(f"{path}: not a CIFAR-10 python batch (a pickled dict with b'data' and "
                        f"b'labels'): {type(error).__name__}: {error}") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (len(data),):
        raise DataError(f"{path}: expected b'data' uint8 of shape (N, 3072) and N b'labels', got data "
                        f"{data.dtype} {data.shape} and labels of shape {labels.shape}")
    return data, labels


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
FOLDER_LAYOUT = "image files (*.png, *.jpg, *.jpeg) directly, or in one subfolder per class"


def _load_folder(
    root: Path | None,
    partition: str,
    size: int | None = None,
    channels: int = 3,
    test_fraction: float = 0.2,
) -> PixelArrays:
    """Images from a folder: files directly in ``root`` (no labels), or in class subfolders
    ``root/<class>/`` (labels = subfolder index in sorted order). 256 levels.

    ``size``: resize the shorter side to ``size`` and center-crop to size x size; None requires all
    images to share one size. ``channels``: 3 (RGB) or 1 (grayscale). The partition is fixed:
    test = round(test_fraction * n) files, drawn by _fixed_partition over the sorted file list.
    """
    if channels not in (1, 3):
        raise DataError(f"folder: channels must be 1 or 3, got {channels}")
    files, labels = _list_images(root)
    rows = _fixed_partition(len(files), round(test_fraction * len(files)), partition)
    images = [_read_image(files[row], size, channels) for row in rows]
    if len({image.shape for image in images}) > 1:
        raise DataError(f"folder: images in {root} have different sizes; pass size=<int> to resize them")
    pixels = np.stack(images) if images else np.zeros((0, channels, size or 1, size or 1), np.uint8)
    part_labels = None if labels is None else labels[rows]
    return PixelArrays(pixels, part_labels, levels=256, num_classes=_num_classes(labels))


def _list_images(root: Path | None) -> tuple[list[Path], np.ndarray | None]:
    """Sorted image files of a folder and their labels (None when the images lie directly in it)."""
    if root is None or not root.is_dir():
        raise DataError(f"folder: expected a directory holding {FOLDER_LAYOUT}; {root} is not a directory")

    def images_in(directory: Path) -> list[Path]:
        return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    direct = images_in(root)
    if direct:
        return direct, None
    class_folders = [folder for folder in sorted(root.iterdir()) if folder.is_dir() and images_in(folder)]
    if not class_folders:
        raise DataError(f"folder: expected {FOLDER_LAYOUT} in {root}; found: {_listing(root)}")
    files_per_class = [images_in(folder) for folder in class_folders]
    labels = np.concatenate([np.full(len(files), label) for label, files in enumerate(files_per_class)])
    return list(itertools.chain.from_iterable(files_per_class)), labels.astype(np.int64)


def _read_image(path: Path, size: int | None, channels: int) -> np.ndarray:
    """One image file as uint8 (C, H, W), optionally resized and center-cropped to size x size."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            image = image.convert("RGB" if channels == 3 else "L")
    except OSError as error:
        raise DataError(f"{path}: cannot read the image ({error})") from None
    if size is not None:
        image = ImageOps.fit(image, (size, size), method=Image.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


NPZ_LAYOUT = ("a .npz file with an integer image array under 'x' or 'images' (else its first array), "
              "shape (N, C, H, W) or (N, H, W[, C]) with C in {1, 3}, values in 0..levels-1; optional "
              "'levels' (scalar) and 'y' or 'labels' (N integers)")


def _load_npz(
    root: Path | None,
    partition: str,
    levels: int | None = None,
    test_fraction: float = 0.2,
) -> PixelArrays:
    """Images from ``root``, a .npz file (see NPZ_LAYOUT). ``levels`` comes from the file's
    'levels' entry or this option (they must agree when both are given). The partition is fixed:
    test = round(test_fraction * n) images, drawn by _fixed_partition."""
    arrays = _read_npz(root)
    others = [key for key in arrays if key not in ("levels", "y", "labels")]
    image_key = next((key for key in ("x", "images") if key in arrays), others[0] if others else None)
    if image_key is None:
        raise DataError(f"npz: {root} holds no arrays; expected {NPZ_LAYOUT}")
    pixels = _npz_images(arrays[image_key], root)
    levels = _npz_levels(arrays.get("levels"), levels, root)
    if pixels.size and (pixels.min() < 0 or pixels.max() > levels - 1):
        raise DataError(f"npz: values of {root} lie in {pixels.min()}..{pixels.max()}, "
                        f"outside 0..{levels - 1} for levels={levels}")
    labels = _npz_labels(arrays, len(pixels), root)
    rows = _fixed_partition(len(pixels), round(test_fraction * len(pixels)), partition)
    part_labels = None if labels is None else labels[rows]
    return PixelArrays(pixels[rows], part_labels, levels=levels, num_classes=_num_classes(labels))


def _read_npz(path: Path | None) -> dict[str, np.ndarray]:
    """All arrays of a .npz file (no pickled objects allowed)."""
    if path is None or not path.is_file():
        raise DataError(f"npz: expected {NPZ_LAYOUT}; {path} is not a file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except Exception as error:  # zipfile, format and pickle errors alike mean a malformed file
        raise DataError(f"npz: cannot read {path} ({type(error).__name__}: {error}); "
                        f"expected {NPZ_LAYOUT}") from None


def _npz_images(array: np.ndarray, path: Path) -> np.ndarray:
    """An integer image array in (N, C, H, W) order: (N, H, W) gains C = 1, (N, H, W, C) is transposed."""
    if not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"npz: the images in {path} have dtype {array.dtype}; expected {NPZ_LAYOUT}")
    if array.ndim == 3:
        return array[:, None]
    if array.ndim == 4 and array.shape[1] in (1, 3):
        return array
    if array.ndim == 4 and array.shape[3] in (1, 3):
        return array.transpose(0, 3, 1, 2)
    raise DataError(f"npz: the images in {path} have shape {array.shape}; expected {NPZ_LAYOUT}")


def _npz_levels(stored: np.ndarray | None, given: int | None, path: Path) -> int:
    """The number of levels from the file or the option; they must agree and one must be present."""
    if stored is not None and (stored.size != 1 or not np.issubdtype(stored.dtype, np.integer)):
        raise DataError(f"npz: 'levels' in {path} must be one integer, got {stored!r}")
    stored_levels = None if stored is None else int(stored)
    if stored_levels is not None and given is not None and stored_levels != given:
        raise DataError(f"npz: {path} stores levels={stored_levels} but levels={given} was given")
    levels = stored_levels if stored_levels is not None else given
    if levels is None or levels < 2:
        raise DataError(f"npz: the number of levels of {path} is unknown or < 2; store 'levels' in the file "
                        "or pass levels=<int>")
    return levels


def _npz_labels(arrays: dict[str, np.ndarray], num_images: int, path: Path) -> np.ndarray | None:
    """Labels under 'y' or 'labels' (N non-negative integers), or None."""
    key = next((key for key in ("y", "labels") if key in arrays), None)
    if key is None:
        return None
    labels = arrays[key]
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (num_images,) or (labels < 0).any():
        raise DataError(f"npz: '{key}' in {path} must hold {num_images} non-negative integers, "
                        f"got {labels.dtype} of shape {labels.shape}")
    return labels.astype(np.int64)


IMAGE_LOADERS: dict[str, Callable[..., PixelArrays]] = {
    "digits": _load_digits,
    "mnist": _load_mnist,
    "cifar10": _load_cifar10,
    "folder": _load_folder,
    "npz": _load_npz,
}


# --------------------------------------------------------------------------------------------------
# Toy distributions: sample(num_samples, generator) -> (N, D); log_prob(x) -> (N,) where exact


class Checkerboard:
    """Uniform density on the 8 dark squares of a 4x4 checkerboard over [-2, 2)^2 (squares whose
    row + column is even): log p(x) = -log 8 on them, -inf elsewhere."""

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pick one of the 8 squares uniformly, then a uniform point inside it."""
        square = torch.randint(0, 8, (num_samples,), generator=generator)
        column = square % 4
        row = 2 * (square // 4) + column % 2
        offsets = torch.rand(num_samples, 2, generator=generator)
        return torch.stack([column, row], dim=1).to(torch.float32) + offsets - 2.0

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log density of each row of x."""
        cell = torch.floor(x + 2.0)
        inside = ((cell >= 0) & (cell <= 3)).all(dim=-1)
        dark = (cell.sum(dim=-1) % 2) == 0
        log_density = torch.full(x.shape[:-1], -math.log(8.0), dtype=x.dtype)
        return log_density.masked_fill(~(inside & dark), -math.inf)


class TwoMoons:
    """sklearn's two interleaving half circles, centred at the origin, plus N(0, noise^2) noise:
    upper (cos t, sin t), lower (1 - cos t, 1/2 - sin t), t ~ U(0, pi), shifted by (-1/2, -1/4).
    Sampling only: the density has no closed form."""

    def __init__(self, noise: float = 0.1):
        self.noise = noise

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Half the points on each moon (the lower gets the extra one), then Gaussian noise."""
        angle = math.pi * torch.rand(num_samples, generator=generator, dtype=torch.float64)
        lower = torch.arange(num_samples) >= num_samples // 2
        circle = torch.stack([angle.cos(), angle.sin()], dim=1)
        points = torch.where(lower[:, None], torch.tensor([1.0, 0.5], dtype=torch.float64) - circle, circle)
        noise = self.noise * torch.randn(num_samples, 2, generator=generator, dtype=torch.float64)
        return (points + noise - torch.tensor([0.5, 0.25], dtype=torch.float64)).to(torch.float32)


def gaussian_mixture(num_components: int = 8, radius: float = 2.0, std: float = 0.2) -> GaussianMixture:
    """Equal-weight isotropic Gaussians (standard deviation ``std``) evenly spaced on a circle; the exact
    density and score are those of `sde.gaussian.GaussianMixture`."""
    angles = 2 * math.pi * torch.arange(num_components, dtype=torch.float64) / num_components
    means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    return GaussianMixture(means, torch.full((num_components, 2), std**2, dtype=torch.float64))


def gaussian(dim: int = 2, mean=None, covariance=None) -> GaussianMixture:
    """N(mean, covariance) in ``dim`` dimensions; by default mean 0 and the correlated covariance
    covariance_ij = 0.5^|i - j|."""
    mean = torch.zeros(dim, dtype=torch.float64) if mean is None else torch.as_tensor(mean, dtype=torch.float64)
    if covariance is None:
        distance = (torch.arange(dim)[:, None] - torch.arange(dim)[None, :]).abs()
        covariance = 0.5 ** distance.to(torch.float64)
    covariance = torch.as_tensor(covariance, dtype=torch.float64)
    if mean.ndim != 1 or covariance.shape != (mean.shape[0], mean.shape[0]):
        raise DataError(f"gaussian: mean must be (D,) and covariance (D, D), got "
                        f"{tuple(mean.shape)} and {tuple(covariance.shape)}")
    try:
        return gaussian_distribution(mean, covariance)
    except ValueError as error:
        raise DataError(f"gaussian: {error}") from None


TOY_DISTRIBUTIONS: dict[str, Callable[..., object]] = {
    "gaussian_mixture": gaussian_mixture,
    "gaussian": gaussian,
    "checkerboard": Checkerboard,
    "two_moons": TwoMoons,
}


def split_seed(seed: int, split: str) -> int:
    """A seed for ``split`` derived from ``seed`` (numpy SeedSequence), distinct across splits."""
    return int(np.random.SeedSequence([seed, SPLITS.index(split)]).generate_state(1)[0])


def _toy_dataset(name: str, split: str, num_samples: int = 10000, seed: int = 0, **options) -> ImageDataset:
    """``num_samples`` points of a toy distribution, drawn with the seed split_seed(seed, split)."""
    distribution = _call_with_options(TOY_DISTRIBUTIONS[name], name, **options)
    generator = torch.Generator().manual_seed(split_seed(seed, split))
    points = distribution.sample(num_samples, generator).float()
    return ImageDataset(x=points, y=None, levels=None, name=name, split=split, distribution=distribution)


# --------------------------------------------------------------------------------------------------
# Batching


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
    order = epoch_indices(len(dataset), epoch, seed, shuffle, rank, world_size, drop_last)
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    for start in range(0, stop, batch_size):
        rows = order[start : start + batch_size].to(dataset.x.device)
        yield Batch(dataset.x[rows], None if dataset.y is None else dataset.y[rows])


class BatchStream:
    """An endless, resumable stream of shuffled full batches for step-based training.

    Epoch e serves ``batches(dataset, batch_size, shuffle=True, drop_last=True, seed, epoch=e, rank,
    world_size)``, then epoch e + 1 begins. The order depends only on (seed, epoch), so
    ``state_dict()`` = {"epoch", "position"} (position: batches already served this epoch) is all a
    checkpoint needs; ``load_state_dict`` continues the same sequence of batches.
    """

    def __init__(
        self, dataset: ImageDataset, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1
    ):
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
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        """Where the stream stands: the epoch, and how many of its batches were served."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a state returned by :meth:`state_dict`."""
        self.epoch, self.position, self._epoch_batches = int(state["epoch"]), int(state["position"]), None
