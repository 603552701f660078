"""Shared fixtures of the nvae tests: a slice of sklearn digits and a tiny VAE trained on it once."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import nvae
from nvae.train import FitConfig, batches, fit

TINY = {"channels": 8, "num_scales": 2, "groups_per_scale": 1, "latent_channels": 2, "cells_per_group": 1,
        "num_preprocess": 1, "dropout": 0.0, "decoder_expansion": 2}


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine OpenMP threads
    that wait on each other make these tests many times slower; the setting is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="package")
def digits(one_thread) -> torch.Tensor:
    """The project's digits training split (1437 images, (B, 1, 8, 8), 17 levels in [-1, 1])."""
    images = load_digits().images.astype(np.float32)
    perm = np.random.default_rng(0).permutation(len(images))
    return torch.from_numpy(2.0 * images[perm[:1437]] / 16.0 - 1.0).unsqueeze(1)


@pytest.fixture(scope="package")
def trained(digits):
    """A tiny NVAE trained for a few hundred steps on 512 digits; returns (model, FitResult, val images)."""
    torch.manual_seed(0)
    vae = nvae.NVAE(**TINY)
    train, val = digits[:512], digits[512:640]
    cfg = FitConfig(max_steps=240, lr=1e-2, kl_warmup=0.25, eval_every=40, restore_best=False)
    result = fit(vae, batches(train, 32, seed=0), cfg, val_x=val)
    return vae.eval(), result, val
