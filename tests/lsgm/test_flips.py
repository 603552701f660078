"""Random horizontal flips of training batches (data option random_flip, on in the CIFAR-10 preset): half the
images, only along the width, and the same flips after a resume."""

import pytest
import torch
from omegaconf import OmegaConf

import lsgm
from lsgm.data import BatchStream, ImageDataset, load_dataset
from lsgm.data.errors import DataError


def numbered_images(random_flip: bool, count: int = 200) -> ImageDataset:
    """Random (so asymmetric) 1×4×5 images, labelled by their index."""
    x = torch.rand(count, 1, 4, 5, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return ImageDataset(x=x, y=torch.arange(count), levels=256, name="numbered", split="train",
                        random_flip=random_flip)


def served(stream: BatchStream, batches: int) -> list:
    return [next(stream) for _ in range(batches)]


def flipped_count(dataset: ImageDataset, batches: list) -> int:
    """How many served images are mirrored along the width; fails on any other change."""
    count = 0
    for batch in batches:
        original = dataset.x[batch.y]
        mirrored = (batch.x == original.flip(-1)).flatten(1).all(1)
        assert ((batch.x == original).flatten(1).all(1) | mirrored).all()
        count += int(mirrored.sum())
    return count


def test_half_the_training_images_are_flipped_and_only_horizontally():
    dataset = numbered_images(random_flip=True)
    batches = served(BatchStream(dataset, 50, seed=3), 60)  # 3000 images, 15 epochs
    assert 0.45 < flipped_count(dataset, batches) / 3000 < 0.55
    assert not any(torch.equal(a.x, b.x) for a, b in zip(batches, batches[4:]))  # epochs differ in their flips


def test_without_the_option_nothing_is_flipped():
    dataset = numbered_images(random_flip=False)
    assert flipped_count(dataset, served(BatchStream(dataset, 50), 8)) == 0


def test_a_resumed_stream_serves_the_same_flipped_batches():
    dataset = numbered_images(random_flip=True)
    first = BatchStream(dataset, 50, seed=7)
    before = served(first, 3)
    state = first.state_dict()
    after = served(first, 6)  # across the end of the first epoch (4 batches)
    resumed = BatchStream(dataset, 50, seed=7)
    resumed.load_state_dict(state)
    for expected, batch in zip(after, served(resumed, 6), strict=True):
        assert torch.equal(expected.x, batch.x) and torch.equal(expected.y, batch.y)
    assert flipped_count(dataset, before + after) > 0


def test_ranks_flip_independently():
    dataset = numbered_images(random_flip=True)
    rank0, rank1 = (next(BatchStream(dataset, 50, seed=1, rank=r, world_size=2)) for r in (0, 1))
    unflipped0, unflipped1 = ((b.x == dataset.x[b.y]).flatten(1).all(1) for b in (rank0, rank1))
    assert not torch.equal(unflipped0, unflipped1)


def test_load_dataset_marks_only_the_train_split():
    splits = {split: load_dataset("digits", split=split, random_flip=True) for split in ("train", "val", "test")}
    assert [splits[s].random_flip for s in ("train", "val", "test")] == [True, False, False]
    assert splits["train"].to("cpu").random_flip
    assert not load_dataset("digits").random_flip
    with pytest.raises(DataError, match="random_flip must be true or false"):
        load_dataset("digits", random_flip="yes")


def test_the_cifar10_preset_flips():
    assert OmegaConf.load(lsgm.config_dir() / "data" / "cifar10.yaml").options.random_flip is True
