"""The KL posterior against closed forms, the vector quantizer's estimator, loss, assignments and EMA codebook."""

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from autoencoder import DiagonalGaussian, VectorQuantizer


def gaussian(dtype=torch.float64):
    generator = torch.Generator().manual_seed(0)
    mean = torch.randn(4, 3, 2, 2, generator=generator, dtype=dtype)
    logvar = torch.randn(4, 3, 2, 2, generator=generator, dtype=dtype)
    return mean, logvar


def test_kl_matches_its_closed_form_and_torch_distributions():
    mean, logvar = gaussian()
    kl = DiagonalGaussian(mean, logvar).kl()
    by_hand = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3))
    reference = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(dim=(1, 2, 3))
    assert kl.shape == (4,)
    assert torch.allclose(kl, by_hand, rtol=1e-12) and torch.allclose(kl, reference, rtol=1e-10)


def test_logvar_is_clamped_and_samples_come_from_the_generator():
    mean, logvar = gaussian()
    posterior = DiagonalGaussian(mean, logvar * 100)
    assert posterior.logvar.min().item() == -30.0 and posterior.logvar.max().item() == 20.0
    posterior = DiagonalGaussian(mean, logvar)
    sample = posterior.sample(torch.Generator().manual_seed(5))
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert torch.equal(sample, mean + (0.5 * logvar).exp() * noise)
    assert torch.equal(posterior.mode(), mean)


def quantizer_and_latents(**kwargs):
    torch.manual_seed(0)
    quantizer = VectorQuantizer(3, codebook_size=8, **kwargs)
    h = torch.randn(2, 3, 4, 4, requires_grad=True)
    return quantizer, h


def nearest_codes(h, codebook):
    """Indices (B, H, W) of the nearest codebook rows in L2, and those rows as (B, dim, H, W)."""
    vectors = h.detach().permute(0, 2, 3, 1)
    indices = torch.cdist(vectors.reshape(-1, vectors.shape[-1]), codebook).argmin(dim=1).view(vectors.shape[:-1])
    return indices, codebook[indices].permute(0, 3, 1, 2)


@pytest.mark.parametrize("training", [True, False])
def test_straight_through_gradient_is_exactly_the_identity(training):
    quantizer, h = quantizer_and_latents()
    quantizer.train(training)
    c = torch.randn(h.shape)
    quantized, _, _ = quantizer(h)
    (c * quantized).sum().backward()
    assert torch.equal(h.grad, c)
    h.grad = None
    (c * quantizer.quantize(h)).sum().backward()
    assert torch.equal(h.grad, c)


@pytest.mark.parametrize("training", [True, False])
def test_quantized_values_are_the_nearest_codes_and_the_loss_is_the_commitment(training):
    quantizer, h = quantizer_and_latents(commitment=0.3, dead_code_threshold=0.0)
    quantizer.train(training)
    codebook = quantizer.codebook.clone()  # train mode moves the codebook after assigning
    quantized, indices, loss = quantizer(h)
    expected_indices, expected_codes = nearest_codes(h, codebook)
    assert indices.shape == (2, 4, 4) and torch.equal(indices, expected_indices)
    assert torch.allclose(quantized, expected_codes, atol=1e-6)
    assert loss.item() == pytest.approx(0.3 * (h - quantized).pow(2).mean().item(), rel=1e-5)


def test_ema_codebook_moves_in_train_mode_only():
    quantizer, h = quantizer_and_latents(decay=0.9, dead_code_threshold=0.0)
    codebook = quantizer.codebook.clone()
    quantizer.eval()
    quantizer(h)
    quantizer.quantize(h)
    assert torch.equal(quantizer.codebook, codebook)
    quantizer.train()
    quantizer.quantize(h)  # never updates
    assert torch.equal(quantizer.codebook, codebook)
    _, indices, _ = quantizer(h)
    # with counts N_k starting at 1 and sums m_k at e_k: e_k ← (γ e_k + (1 − γ) Σ_{h→k} h) / (γ + (1 − γ) n_k)
    vectors = h.detach().permute(0, 2, 3, 1).reshape(-1, 3)
    one_hot = torch.nn.functional.one_hot(indices.flatten(), 8).float()
    counts, sums = one_hot.sum(0), one_hot.T @ vectors
    expected = (0.9 * codebook + 0.1 * sums) / (0.9 + 0.1 * counts)[:, None]
    assert not torch.equal(quantizer.codebook, codebook)
    assert torch.allclose(quantizer.codebook, expected, rtol=1e-4, atol=1e-6)


def test_dead_codes_restart_from_batch_vectors():
    quantizer, h = quantizer_and_latents(decay=0.5, dead_code_threshold=4.0)
    _, indices, _ = quantizer(h)
    # counts become 0.5 + 0.5 n_k: codes with fewer than 7 of the 32 vectors fall below 4 and restart from data
    counts = torch.bincount(indices.flatten(), minlength=8)
    vectors = h.detach().permute(0, 2, 3, 1).reshape(-1, 3)
    for code in torch.nonzero(counts < 7).flatten():
        assert torch.isclose(quantizer.codebook[code], vectors).all(dim=1).any()
