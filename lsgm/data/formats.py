"""The file readers: one function per format, ``read_<format>(root, partition, **options) -> PixelArrays``.

``partition`` is ``"train"`` or ``"test"``: every format has a fixed train/test partition (the files' own,
or :func:`_fixed_partition` where the files have none); the ``val`` split is cut from the train partition
by :mod:`lsgm.data.datasets`. Formats: sklearn ``digits`` (shipped with scikit-learn), MNIST IDX files,
CIFAR-10 python batches, a folder of images, a ``.npz`` file. A missing or malformed file raises one
:class:`DataError` naming the expected layout.
"""

from __future__ import annotations

import gzip
import itertools
import math
import pickle
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import checks
from .errors import DataError

PARTITIONS = ("train", "test")


class PixelArrays(NamedTuple):
    """What a reader returns for one partition: integer pixels (N, C, H, W) in
    {0..levels-1}, labels (N,) or None, the number of levels, the number of classes or None."""

    pixels: np.ndarray
    labels: np.ndarray | None
    levels: int
    num_classes: int | None


def _fixed_partition(num_examples: int, num_test: int, partition: str) -> np.ndarray:
    """Indices of a fixed train/test partition: ``perm = default_rng(0).permutation(n)``,
    train = perm[:n - num_test], test = perm[n - num_test:]."""
    permutation = np.random.default_rng(0).permutation(num_examples)
    boundary = num_examples - num_test
    return permutation[boundary:] if partition == "test" else permutation[:boundary]


def _num_classes(labels: np.ndarray | None) -> int | None:
    """1 + the largest label, or None without labels."""
    return None if labels is None or len(labels) == 0 else int(labels.max()) + 1


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


def read_digits(root: Path | None, partition: str) -> PixelArrays:
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


def read_mnist(
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
    checks.fraction(threshold, "MNIST: threshold")
    checks.integer_in(seed, "MNIST: seed", 0)
    checks.boolean(pad_to_32, "MNIST: pad_to_32")
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
    threshold or by one Bernoulli draw from default_rng([seed, i]), i = 0 for the train partition and 1
    for the test one."""
    if mode is None:
        return intensities, 256
    unit = intensities / 255.0
    if mode == "threshold":
        return (unit > threshold).astype(np.uint8), 2
    generator = np.random.default_rng([seed, PARTITIONS.index(partition)])
    return (generator.random(unit.shape) < unit).astype(np.uint8), 2


CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR_LAYOUT = "data_batch_1 … data_batch_5 and test_batch (directly or under cifar-10-batches-py/)"


def read_cifar10(root: Path | None, partition: str) -> PixelArrays:
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
FOLDER_BYTES_PER_PIXEL = 6  # the uint8 images, their stack, and the float32 dataset made of them
FOLDER_LAYOUT = "image files (*.png, *.jpg, *.jpeg) directly, or in one subfolder per class"


def read_folder(
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
    if not checks.is_integer(channels) or channels not in (1, 3):
        raise DataError(f"folder: channels must be 1 or 3, got {channels!r}")
    if size is not None:
        checks.integer_in(size, "folder: size (the side images are resized to)", 1)
    checks.fraction(test_fraction, "folder: test_fraction", upper_open=True)
    files, labels = _list_images(root)
    if size is not None:
        checks.check_memory(len(files) * channels * size**2 * FOLDER_BYTES_PER_PIXEL, f"folder: size={size}",
                            "lower size")
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
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: cannot read the image ({type(error).__name__}: {error})") from None
    if size is not None:
        image = ImageOps.fit(image, (size, size), method=Image.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


NPZ_LAYOUT = ("a .npz file with an integer image array under 'x' or 'images' (else its first array), "
              "shape (N, C, H, W) or (N, H, W[, C]) with C in {1, 3}, values in 0..levels-1; optional "
              "'levels' (scalar) and 'y' or 'labels' (N integers)")


def read_npz(
    root: Path | None,
    partition: str,
    levels: int | None = None,
    test_fraction: float = 0.2,
) -> PixelArrays:
    """Images from ``root``, a .npz file (see NPZ_LAYOUT). ``levels`` comes from the file's
    'levels' entry or this option (they must agree when both are given). The partition is fixed:
    test = round(test_fraction * n) images, drawn by _fixed_partition."""
    if levels is not None:
        checks.levels(levels, "npz: levels")
    checks.fraction(test_fraction, "npz: test_fraction", upper_open=True)
    arrays = _npz_arrays(root)
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


def _npz_arrays(path: Path | None) -> dict[str, np.ndarray]:
    """All arrays of a .npz file (no pickled objects allowed)."""
    if path is None or not path.is_file():
        raise DataError(f"npz: expected {NPZ_LAYOUT}; {path} is not a file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as error:  # zipfile, format, pickle and memory errors alike mean a malformed file
        raise DataError(f"npz: cannot read {path} ({type(error).__name__}: {error}); "
                        f"expected {NPZ_LAYOUT}") from None
    if not all(isinstance(array, np.ndarray) for array in arrays.values()):
        raise DataError(f"npz: {path} is not a .npz of arrays (e.g. a torch .pt file or another zip); "
                        f"expected {NPZ_LAYOUT}")
    return arrays


def _npz_images(array: np.ndarray, path: Path) -> np.ndarray:
    """An integer image array in (N, C, H, W) order: (N, H, W) gains C = 1, (N, H, W, C) is transposed."""
    if not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"npz: the images in {path} have dtype {array.dtype}; expected {NPZ_LAYOUT}")
    if array.ndim in (3, 4) and 0 in array.shape:
        raise DataError(f"npz: the images in {path} have shape {array.shape}, with no pixels; expected {NPZ_LAYOUT}")
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
        raise DataError(f"npz: 'levels' in {path} must be one integer, got {stored.dtype} of shape {stored.shape}")
    stored_levels = None if stored is None else int(stored.item())
    if stored_levels is not None and given is not None and stored_levels != given:
        raise DataError(f"npz: {path} stores levels={stored_levels} but levels={given} was given")
    levels = stored_levels if stored_levels is not None else given
    if levels is None:
        raise DataError(f"npz: the number of levels of {path} is unknown; store 'levels' in the file "
                        "or pass levels=<int>")
    return checks.levels(levels, f"npz: levels of {path}")


def _npz_labels(arrays: dict[str, np.ndarray], num_images: int, path: Path) -> np.ndarray | None:
    """Labels under 'y' or 'labels' (N non-negative integers), or None."""
    key = next((key for key in ("y", "labels") if key in arrays), None)
    if key is None:
        return None
    labels = arrays[key]
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (num_images,):
        raise DataError(f"npz: '{key}' in {path} must hold {num_images} non-negative integers, "
                        f"got {labels.dtype} of shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= checks.MAX_CLASSES):
        raise DataError(f"npz: '{key}' in {path} must hold integers in 0..{checks.MAX_CLASSES - 1} (class indices), "
                        f"got values in {labels.min()}..{labels.max()}")
    return labels.astype(np.int64)
