"""A small CNN classifier of sklearn's 8×8 digits: features for "digits-FD" and class statistics of samples.

Train the shipped weights (seeded; about a minute on two CPU cores) with

    python -m lsgm.metrics.digits_classifier --out lsgm/assets/digits_classifier.pt

It fits the whole digits train split (1437 images, val_fraction=0) with ±1-pixel shifts, AdamW and a
cosine learning rate, and reports (never selects on) its accuracy on the 360-image test split. The
penultimate layer (64 ReLU units) gives `DigitsFeatures`; the logits give class probabilities.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lsgm.data import load_dataset

from .features import FeatureExtractor, WeightsError, load_matching, load_state_dict_file

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / "digits_classifier.pt"
TRAIN_COMMAND = "python -m lsgm.metrics.digits_classifier --out lsgm/assets/digits_classifier.pt"
NUM_FEATURES = 64


class DigitsNet(nn.Module):
    """(B, 1, 8, 8) in [−1, 1] -> conv32-conv32-pool-conv64-pool (2×2) -> 64 features -> 10 logits."""

    def __init__(self, dropout: float = 0.3):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 2 * 2, NUM_FEATURES), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(NUM_FEATURES, 10))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The penultimate layer (B, 64)."""
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images))


class DigitsConvFeatures(nn.Module):
    """The classifier's three convolutional feature maps (after each ReLU: 32×8×8, 32×8×8, 64×4×4) of images in
    [−1, 1]: the perceptual features of an LDM's first stage on digits (any image size, one channel)."""

    TAPS = (1, 3, 6)  # indices in `DigitsNet.body` of the ReLUs whose outputs are returned

    def __init__(self, classifier: DigitsNet):
        super().__init__()
        self.layers = classifier.body[: self.TAPS[-1] + 1]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for index, layer in enumerate(self.layers):
            images = layer(images)
            if index in self.TAPS:
                maps.append(images)
        return maps


def shift_by_one_pixel(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image moved by (dy, dx) ∈ {−1, 0, 1}², drawn uniformly, the uncovered border filled with
    the background −1."""
    count, _, height, width = images.shape
    padded = F.pad(images, (1, 1, 1, 1), value=-1.0)
    offsets = torch.randint(0, 3, (count, 2), generator=generator)
    rows = (offsets[:, 0, None] + torch.arange(height))[:, :, None]  # (N, H, 1)
    columns = (offsets[:, 1, None] + torch.arange(width))[:, None, :]  # (N, 1, W)
    return padded[torch.arange(count)[:, None, None], 0, rows, columns][:, None]


def train_classifier(seed: int = 0, epochs: int = 60, batch_size: int = 64, lr: float = 3e-3,
                     weight_decay: float = 1e-3) -> DigitsNet:
    """Fit DigitsNet on the full digits train split with ±1-pixel shifts (seeded)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train = load_dataset("digits", split="train", val_fraction=0)
    model = DigitsNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    model.train()
    for _ in range(epochs):
        for rows in torch.randperm(len(train), generator=generator).split(batch_size):
            loss = F.cross_entropy(model(shift_by_one_pixel(train.x[rows], generator)), train.y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: DigitsNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of images whose most probable class is the label."""
    return (model(images).argmax(1) == labels).double().mean().item()


def load_digits_classifier(path: str | Path = DEFAULT_WEIGHTS) -> DigitsNet:
    """The trained classifier from `path` (default: the shipped lsgm/assets/digits_classifier.pt), in eval mode."""
    how_to_get = f"create it with `{TRAIN_COMMAND}`"
    checkpoint = load_state_dict_file(path, how_to_get)
    if "state_dict" not in checkpoint:
        raise WeightsError(f"{path} has no 'state_dict' entry; {how_to_get}")
    model = DigitsNet()
    load_matching(model, checkpoint["state_dict"], str(path))
    return model.eval().requires_grad_(False)


class DigitsFeatures(FeatureExtractor):
    """The digits classifier's penultimate features (64-d) of 1×8×8 images: the features of digits-FD."""

    name = "digits-classifier"
    input_size = (8, 8)
    num_features = NUM_FEATURES

    def __init__(self, classifier: DigitsNet | None = None):
        self.classifier = load_digits_classifier() if classifier is None else classifier

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        check_digit_images(images)
        return self.classifier.features(images.float())


def check_digit_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, 8, 8):
        raise ValueError(f"the digits classifier takes images (B, 1, 8, 8), got {tuple(images.shape)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the digits classifier behind digits-FD (seeded).")
    parser.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS, help="where to write the weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=60)
    arguments = parser.parse_args(argv)
    model = train_classifier(arguments.seed, arguments.epochs)
    test = load_dataset("digits", split="test")
    test_accuracy = accuracy(model, test.x, test.y)
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    torch.save({"state_dict": state, "test_accuracy": test_accuracy, "seed": arguments.seed,
                "epochs": arguments.epochs, "command": TRAIN_COMMAND}, arguments.out)
    print(f"test accuracy {test_accuracy:.4f} ({round(test_accuracy * len(test))}/{len(test)}); "
          f"wrote {arguments.out} ({arguments.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
