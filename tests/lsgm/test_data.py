"""lsgm.data: each reader reads tiny files of its format exactly; malformed inputs raise DataError; the digits
split is the project's one split; batching is sharded, complete and resumable."""

import gzip
import itertools
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from lsgm.data import (
    BatchStream,
    DataError,
    ImageDataset,
    batches,
    epoch_indices,
    load_dataset,
    read_idx,
    to_levels,
    to_unit_range,
)

# --------------------------------------------------------------------------------------------------
# Helpers that write each format


def write_idx(path, array, compress=False):
    """An IDX file: magic 00 00 08 <ndim>, big-endian uint32 dims, then the unsigned bytes."""
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def write_mnist(root, num_train=10, num_test=4, size=(5, 6), compress=False, seed=0):
    """The four MNIST files with random bytes; returns {partition: (images, labels)}."""
    generator = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for prefix, count in (("train", num_train), ("t10k", num_test)):
        images = generator.integers(0, 256, (count, *size), dtype=np.uint8)
        labels = generator.integers(0, 10, count, dtype=np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels, compress)
        written[prefix] = (images, labels)
    return written


def write_cifar(root, per_batch=2, protocol=pickle.DEFAULT_PROTOCOL, seed=0):
    """Six CIFAR-10 python batches; returns {file name: (data, labels)}."""
    generator = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = generator.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(label) for label in generator.integers(0, 10, per_batch)]
        (root / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=protocol))
        written[name] = (data, labels)
    return written


def assert_data_error(match, function, *arguments, **options):
    """function(...) raises DataError whose message contains every string in ``match``."""
    with pytest.raises(DataError) as raised:
        function(*arguments, **options)
    for fragment in match:
        assert fragment in str(raised.value), str(raised.value)
    return str(raised.value)


# --------------------------------------------------------------------------------------------------
# Levels


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_levels_round_trip_every_pixel_value(levels):
    k = torch.arange(levels)
    x = to_unit_range(k, levels)
    assert x[0].item() == -1.0 and x[-1].item() == 1.0
    assert torch.allclose(x.double(), 2 * k.double() / (levels - 1) - 1, atol=1e-7)
    assert torch.equal(to_levels(x, levels), k)
    assert torch.equal(to_levels(torch.tensor([-3.0, 3.0]), levels), torch.tensor([0, levels - 1]))


# --------------------------------------------------------------------------------------------------
# digits


@pytest.fixture(scope="module")
def sklearn_digits():
    from sklearn.datasets import load_digits

    return load_digits()


def test_digits_fixed_split_with_val_carved_from_the_end_of_train(sklearn_digits):
    permutation = np.random.default_rng(0).permutation(1797)
    full_train = load_dataset("digits", val_fraction=0.0)
    train, val, test = (load_dataset("digits", split=split) for split in ("train", "val", "test"))
    assert (len(full_train), len(train), len(val), len(test)) == (1437, 1293, 144, 360)
    for dataset, rows in ((full_train, permutation[:1437]), (train, permutation[:1293]),
                          (val, permutation[1293:1437]), (test, permutation[1437:])):
        assert dataset.levels == 17 and dataset.num_classes == 10 and dataset.shape == (1, 8, 8)
        expected = torch.as_tensor(sklearn_digits.images[rows]).long()
        assert torch.equal(to_levels(dataset.x, 17)[:, 0], expected)
        assert torch.equal(dataset.y, torch.as_tensor(sklearn_digits.target[rows]))
    assert torch.equal(load_dataset("digits", split="val").x, val.x)  # deterministic
    assert len(load_dataset("digits", split="val", val_fraction=0.25)) == round(0.25 * 1437)


def test_empty_val_split_and_bad_names_raise_data_error():
    assert_data_error(["val_fraction"], load_dataset, "digits", split="val", val_fraction=0.0)
    assert_data_error(["unknown split", "train, val, test"], load_dataset, "digits", split="valid")
    assert_data_error(["unknown dataset", "digits", "mnist"], load_dataset, "digitz")
    assert_data_error(["digits", "size", "accepted options: none"], load_dataset, "digits", size=4)
    assert_data_error(["val_fraction"], load_dataset, "digits", val_fraction=1.0)


# --------------------------------------------------------------------------------------------------
# MNIST


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_files_load_exactly(tmp_path, compress):
    written = write_mnist(tmp_path, compress=compress)
    train = load_dataset("mnist", tmp_path, val_fraction=0.0)
    test = load_dataset("mnist", tmp_path, split="test")
    for dataset, (images, labels) in ((train, written["train"]), (test, written["t10k"])):
        assert dataset.levels == 256 and dataset.num_classes == 10 and dataset.shape == (1, 5, 6)
        assert torch.equal(to_levels(dataset.x, 256)[:, 0], torch.as_tensor(images).long())
        assert torch.equal(dataset.y, torch.as_tensor(labels).long())
    val = load_dataset("mnist", tmp_path, split="val", val_fraction=0.2)
    assert torch.equal(val.x, train.x[8:]) and torch.equal(load_dataset("mnist", tmp_path).x, train.x[:9])


def test_mnist_torchvision_layout_binarisation_and_padding(tmp_path):
    images = write_mnist(tmp_path / "MNIST" / "raw", size=(28, 28))["train"][0]
    unit = images / 255.0
    thresholded = load_dataset("mnist", tmp_path, binarize="threshold", threshold=0.3, val_fraction=0.0)
    assert thresholded.levels == 2
    assert torch.equal(to_levels(thresholded.x, 2)[:, 0], torch.as_tensor(unit > 0.3).long())
    stochastic = [load_dataset("mnist", tmp_path, binarize="stochastic", seed=seed).x for seed in (1, 1, 2)]
    assert torch.equal(stochastic[0], stochastic[1]) and not torch.equal(stochastic[0], stochastic[2])
    assert set(stochastic[0].unique().tolist()) == {-1.0, 1.0}
    drawn = np.random.default_rng([1, 0]).random(unit.shape) < unit  # the train partition's draw: [seed, 0]
    whole = load_dataset("mnist", tmp_path, binarize="stochastic", seed=1, val_fraction=0.0).x
    assert torch.equal(to_levels(whole, 2)[:, 0], torch.as_tensor(drawn).long())
    ones = to_levels(load_dataset("mnist", tmp_path, binarize="stochastic", val_fraction=0.0).x, 2)[:, 0]
    assert not ones[torch.as_tensor(images == 0)].any() and ones[torch.as_tensor(images == 255)].all()
    padded = load_dataset("mnist", tmp_path, pad_to_32=True, val_fraction=0.0)
    assert padded.shape == (1, 32, 32)
    assert torch.equal(to_levels(padded.x, 256)[:, 0, 2:30, 2:30], torch.as_tensor(images).long())
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (padded.x[:, 0, border] == -1).all()
    assert_data_error(["binarize", "stochastic"], load_dataset, "mnist", tmp_path, binarize="otsu")


def test_mnist_missing_directory_names_expected_files(tmp_path):
    message = assert_data_error(["MNIST", "train-images-idx3-ubyte[.gz]", "t10k-labels-idx1-ubyte[.gz]",
                                 "does not exist"], load_dataset, "mnist", tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in message
    (tmp_path / "stray.txt").write_text("x")
    assert_data_error(["found: stray.txt"], load_dataset, "mnist", tmp_path)
    assert_data_error(["no root given"], load_dataset, "mnist")


def test_mnist_malformed_files_raise_data_error(tmp_path):
    write_mnist(tmp_path)
    images_path = tmp_path / "train-images-idx3-ubyte"
    good = images_path.read_bytes()
    images_path.write_bytes(b"\x12\x34" + good[2:])
    assert_data_error(["not an IDX file", "magic number 12340803"], load_dataset, "mnist", tmp_path)
    images_path.write_bytes(good[:-7])
    assert_data_error(["truncated", "(10, 5, 6)"], load_dataset, "mnist", tmp_path)
    images_path.write_bytes(good[:9])
    assert_data_error(["truncated IDX header"], load_dataset, "mnist", tmp_path)
    write_idx(images_path, np.zeros(10, np.uint8))  # a labels file where images belong
    assert_data_error(["expected unsigned bytes with 3 dims", "00000803"], load_dataset, "mnist", tmp_path)
    write_idx(images_path, np.zeros((9, 5, 6), np.uint8))
    assert_data_error(["9 images but", "10 labels"], load_dataset, "mnist", tmp_path)
    images_path.unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    assert_data_error(["cannot read the file"], load_dataset, "mnist", tmp_path)


def test_read_idx_other_type_codes(tmp_path):
    values = np.arange(6).reshape(2, 3) - 3
    path = tmp_path / "ints.idx"
    path.write_bytes(bytes([0, 0, 0x0C, 2]) + struct.pack(">2I", 2, 3) + values.astype(">i4").tobytes())
    loaded = read_idx(path)
    assert np.array_equal(loaded, values) and loaded.dtype == np.int32 and loaded.flags.writeable


# --------------------------------------------------------------------------------------------------
# CIFAR-10


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
def test_cifar10_batches_load_exactly(tmp_path, protocol):
    written = write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    train = load_dataset("cifar10", tmp_path, val_fraction=0.0)
    test = load_dataset("cifar10", tmp_path, split="test")
    train_data = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert train.shape == (3, 32, 32) and train.levels == 256 and train.num_classes == 10 and len(train) == 10
    pixels = to_levels(train.x, 256)
    assert pixels[3, 1, 4, 5].item() == train_data[3, 1 * 1024 + 4 * 32 + 5]  # red, green, blue planes
    assert torch.equal(pixels.reshape(10, 3072), torch.as_tensor(train_data).long())
    assert train.y.tolist() == train_labels
    test_data = torch.as_tensor(written["test_batch"][0]).long()
    assert torch.equal(to_levels(test.x, 256).reshape(2, 3072), test_data)


def test_cifar10_missing_and_malformed_batches_raise_data_error(tmp_path):
    assert_data_error(["CIFAR-10", "data_batch_1", "test_batch", "cifar-10-batches-py"],
                      load_dataset, "cifar10", tmp_path)
    write_cifar(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(b"\x80\x04garbage")
    assert_data_error(["data_batch_3", "not a CIFAR-10 python batch"], load_dataset, "cifar10", tmp_path)
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((2, 3000), np.uint8),
                                                          b"labels": [0, 1]}))
    assert_data_error(["data_batch_3", "(N, 3072)", "(2, 3000)"], load_dataset, "cifar10", tmp_path)
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps(print))  # any global outside numpy is refused
    assert_data_error(["refusing to load builtins.print"], load_dataset, "cifar10", tmp_path)
    assert len(load_dataset("cifar10", tmp_path, split="test")) == 2  # the test batch is still readable


# --------------------------------------------------------------------------------------------------
# Image folder


def test_folder_with_class_subfolders_loads_png_pixels_exactly(tmp_path):
    generator = np.random.default_rng(0)
    expected = set()
    for label, name in enumerate(["cat", "dog"]):
        (tmp_path / name).mkdir()
        for index in range(3 + label):
            pixels = generator.integers(0, 256, (6, 7, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{index}.png")
            expected.add((label, pixels.transpose(2, 0, 1).tobytes()))
    dataset = load_dataset("folder", tmp_path, test_fraction=0.0, val_fraction=0.0)
    assert dataset.shape == (3, 6, 7) and dataset.levels == 256 and dataset.num_classes == 2
    pixels = to_levels(dataset.x, 256).to(torch.uint8).numpy()
    assert {(int(label), image.tobytes()) for label, image in zip(dataset.y, pixels)} == expected
    train = load_dataset("folder", tmp_path, val_fraction=0.0)
    test = load_dataset("folder", tmp_path, split="test")
    assert (len(train), len(test)) == (6, 1)  # test = round(0.2 * 7)
    assert load_dataset("folder", tmp_path, size=4).shape == (3, 4, 4)
    grey = load_dataset("folder", tmp_path, channels=1, test_fraction=0.0, val_fraction=0.0)
    assert grey.shape == (1, 6, 7) and grey.x.min() >= -1 and grey.x.max() <= 1


def test_folder_unlabelled_grayscale_and_errors(tmp_path):
    levels = np.arange(0, 256, 4, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(levels).save(tmp_path / "a.png")
    Image.fromarray(255 - levels).save(tmp_path / "b.PNG")
    dataset = load_dataset("folder", tmp_path, channels=1, test_fraction=0.0, val_fraction=0.0)
    assert dataset.y is None and dataset.num_classes is None
    assert sorted(to_levels(dataset.x, 256)[:, 0, 0, 1].tolist()) == [4, 251]
    Image.fromarray(levels[:, :5]).save(tmp_path / "c.png")
    assert_data_error(["different sizes", "size="], load_dataset, "folder", tmp_path, test_fraction=0.0)
    (tmp_path / "d.png").write_bytes(b"not a png")
    assert_data_error(["d.png", "cannot read the image"], load_dataset, "folder", tmp_path, size=8,
                      test_fraction=0.0)
    (tmp_path / "empty").mkdir()
    assert_data_error(["*.png", "subfolder per class", "nothing"], load_dataset, "folder", tmp_path / "empty")
    assert_data_error(["not a directory"], load_dataset, "folder", tmp_path / "missing")
    assert_data_error(["channels must be 1 or 3"], load_dataset, "folder", tmp_path, channels=2)


# --------------------------------------------------------------------------------------------------
# npz


def test_npz_layouts_levels_and_labels(tmp_path):
    generator = np.random.default_rng(0)
    images = generator.integers(0, 5, (10, 4, 3, 3), dtype=np.int16)  # (N, H, W, C), 5 levels
    labels = generator.integers(0, 3, 10)
    np.savez(tmp_path / "hwc.npz", images=images, y=labels, levels=np.int64(5))
    dataset = load_dataset("npz", tmp_path / "hwc.npz", test_fraction=0.0, val_fraction=0.0)
    rows = np.random.default_rng(0).permutation(10)
    assert dataset.shape == (3, 4, 3) and dataset.levels == 5 and dataset.num_classes == int(labels.max()) + 1
    assert torch.equal(to_levels(dataset.x, 5), torch.as_tensor(images[rows].transpose(0, 3, 1, 2)).long())
    assert torch.equal(dataset.y, torch.as_tensor(labels[rows]))
    np.savez(tmp_path / "nhw.npz", np.zeros((5, 2, 2), np.uint8))  # first array, levels given
    plain = load_dataset("npz", tmp_path / "nhw.npz", levels=2, test_fraction=0.4)
    assert plain.shape == (1, 2, 2) and len(plain) == 3 and plain.y is None and (plain.x == -1).all()


def test_npz_malformed_files_raise_data_error(tmp_path):
    def npz(**arrays):
        path = tmp_path / f"{len(list(tmp_path.iterdir()))}.npz"
        np.savez(path, **arrays)
        return path

    integers = np.zeros((4, 2, 2), np.uint8)
    assert_data_error(["dtype float32", "integer"], load_dataset, "npz", npz(x=integers.astype(np.float32)),
                      levels=2)
    assert_data_error(["outside 0..1"], load_dataset, "npz", npz(x=integers + 2), levels=2)
    assert_data_error(["levels", "unknown"], load_dataset, "npz", npz(x=integers))
    assert_data_error(["stores levels=2 but levels=4"], load_dataset, "npz", npz(x=integers, levels=2),
                      levels=4)
    assert_data_error(["shape (4, 2)"], load_dataset, "npz", npz(x=integers[:, 0]), levels=2)
    assert_data_error(["'y'", "4 non-negative integers"], load_dataset, "npz", npz(x=integers, y=[0, 1]),
                      levels=2)
    assert_data_error(["not a file"], load_dataset, "npz", tmp_path / "missing.npz")
    (tmp_path / "fake.npz").write_bytes(b"PK\x03\x04 truncated")
    assert_data_error(["cannot read", "'x' or 'images'"], load_dataset, "npz", tmp_path / "fake.npz")


# --------------------------------------------------------------------------------------------------
# Batching


def _labelled_points(count):
    """A dataset whose x equals its label, so that batches show which examples they hold."""
    return ImageDataset(x=torch.arange(count, dtype=torch.float32)[:, None], y=torch.arange(count), levels=count,
                        name="labelled", split="train")


def test_one_epoch_covers_every_example_once():
    dataset = _labelled_points(23)
    served = list(batches(dataset, 5, seed=1))
    assert [len(batch.x) for batch in served] == [5, 5, 5, 5, 3]
    assert sorted(torch.cat([batch.y for batch in served]).tolist()) == list(range(23))
    assert all(torch.equal(batch.x[:, 0].long(), batch.y) for batch in served)
    assert [len(batch.x) for batch in batches(dataset, 5, drop_last=True)] == [5] * 4
    in_order = torch.cat([batch.y for batch in batches(dataset, 5, shuffle=False)])
    assert torch.equal(in_order, torch.arange(23))
    assert not torch.equal(epoch_indices(23, epoch=0), epoch_indices(23, epoch=1))


def test_ranks_share_an_epoch_like_distributed_sampler():
    shares = [epoch_indices(23, epoch=2, rank=rank, world_size=4) for rank in range(4)]
    assert [len(share) for share in shares] == [6] * 4  # wrapped round to 24
    assert set(torch.cat(shares).tolist()) == set(range(23))
    dropped = [epoch_indices(23, epoch=2, rank=rank, world_size=4, drop_last=True) for rank in range(4)]
    assert [len(share) for share in dropped] == [5] * 4 and len(set(torch.cat(dropped).tolist())) == 20
    with pytest.raises(ValueError, match="rank"):
        epoch_indices(23, epoch=0, rank=4, world_size=4)


def test_batch_stream_resumes_the_same_order_across_epochs():
    dataset = _labelled_points(23)
    stream = BatchStream(dataset, batch_size=5, seed=7)
    reference = [batch.y for batch in itertools.islice(BatchStream(dataset, batch_size=5, seed=7), 14)]
    first = [batch.y for batch in itertools.islice(stream, 6)]
    state = stream.state_dict()
    assert state == {"epoch": 1, "position": 2}  # 4 full batches per epoch
    resumed = BatchStream(dataset, batch_size=5, seed=7)
    resumed.load_state_dict(state)
    rest = [batch.y for batch in itertools.islice(resumed, 8)]
    assert all(torch.equal(a, b) for a, b in zip(first + rest, reference, strict=True))
    epoch_one = torch.cat(reference[4:8])
    assert len(set(epoch_one.tolist())) == 20 and not torch.equal(epoch_one, torch.cat(reference[:4]))
    with pytest.raises(DataError, match="no full batch"):
        BatchStream(dataset, batch_size=6, world_size=4)


def test_dataset_to_device_keeps_everything_else():
    dataset = load_dataset("digits", split="test")
    moved = dataset.to("cpu")
    assert moved.levels == 17 and moved.name == "digits" and torch.equal(moved.y, dataset.y)
