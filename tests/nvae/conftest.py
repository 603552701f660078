"""Shared fixtures of the nvae tests: the project's digits split (from lsgm.data) and a tiny VAE trained on it
once with nvae's training pieces."""

import pytest
import torch

import nvae
from lsgm.data import BatchStream, load_dataset
from nvae.train import FitConfig, kl_warmup_weight, make_optimizer, set_lr, training_loss, warmup_cosine_lr

TINY = {"channels": 8, "num_scales": 2, "groups_per_scale": 1, "latent_channels": 2, "cells_per_group": 1,
        "num_preprocess": 1, "dropout": 0.0, "decoder_expansion": 2}
TRAINING_STEPS = 240



@pytest.fixture(scope="package")
def digits_split() -> dict:
    """The project's digits splits from lsgm.data: train 1293, val 144, test 360 images (17 levels)."""
    return {split: load_dataset("digits", split=split) for split in ("train", "val", "test")}


@pytest.fixture(scope="package")
def digits(digits_split) -> torch.Tensor:
    """The digits training images, (1293, 1, 8, 8) in [-1, 1]."""
    return digits_split["train"].x


def validation_bpd(vae: nvae.NVAE, x: torch.Tensor) -> float:
    """The single-sample ELBO of x in bits/dim, in eval mode under seed 0."""
    torch.manual_seed(0)
    return vae.eval().nll_bpd(x, k=1).mean().item()


@pytest.fixture(scope="package")
def trained(digits_split):
    """A tiny NVAE trained for TRAINING_STEPS steps of 32 training digits with nvae's pieces in the plainest
    loop (lsgm.train.Trainer adds the guards, evaluation and checkpoints): warm-up + cosine learning rate,
    KL warm-up over the first quarter. Returns (model in eval mode, validation images, their bpd before and
    after training)."""
    torch.manual_seed(0)
    vae = nvae.NVAE(**TINY)
    val = digits_split["val"].x
    before = validation_bpd(vae, val)
    cfg = FitConfig(lr=1e-2)
    optimizer = make_optimizer(vae.parameters(), cfg)
    stream = BatchStream(digits_split["train"], batch_size=32, seed=0)
    vae.train()
    for step, batch in zip(range(TRAINING_STEPS), stream):
        progress = step / TRAINING_STEPS
        set_lr(optimizer, warmup_cosine_lr(progress, cfg.lr, 1e-4, warmup=0.02))
        loss = training_loss(vae, batch.x, kl_warmup_weight(progress, 0.25), cfg)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return vae.eval(), val, before, validation_bpd(vae, val)
