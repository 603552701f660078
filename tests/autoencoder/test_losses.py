"""Hinge losses, the adaptive weight and AutoencoderLoss against hand computations."""

import math

import pytest
import torch
from torch import nn

from autoencoder import AutoencoderLoss, adaptive_weight, hinge_discriminator_loss, hinge_generator_loss
from autoencoder.model import AutoencoderOutput


def test_hinge_losses_on_known_logits():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 3.0])
    # relu(1 − real) = [0, 0.5, 2], relu(1 + fake) = [0, 1, 4]: ½ (2.5/3 + 5/3) = 1.25
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(1.25)
    assert hinge_generator_loss(fake).item() == pytest.approx(-1.0 / 3.0)


def linear_setup():
    """y = W a with W (2, 3): L_rec = ½‖y − t‖², L_G = cᵀy, so ∇_W L_rec = (y − t) aᵀ and ∇_W L_G = c aᵀ."""
    weight = nn.Parameter(torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]], dtype=torch.float64))
    a = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    target = torch.tensor([0.5, 1.0], dtype=torch.float64)
    y = weight @ a
    return weight, a, y, target


def test_adaptive_weight_is_the_ratio_of_gradient_norms():
    weight, a, y, target = linear_setup()
    c = torch.tensor([0.3, -0.4], dtype=torch.float64)
    rec_loss, gan_loss = 0.5 * (y - target).pow(2).sum(), (c * y).sum()
    lam = adaptive_weight(rec_loss, gan_loss, weight)
    # ‖(y − t) aᵀ‖ = ‖y − t‖·‖a‖; y = [−3.5, 5], y − t = [−4, 4], ‖a‖ = √6, ‖c‖ = 0.5
    expected = math.sqrt(32) * math.sqrt(6) / (0.5 * math.sqrt(6) + 1e-4)
    assert lam.item() == pytest.approx(expected, rel=1e-12)
    assert not lam.requires_grad
    (rec_loss + lam * gan_loss).backward()  # both graphs were kept
    assert torch.allclose(weight.grad, torch.outer(y - target + lam * c, a).detach())


def test_adaptive_weight_clamps_at_max_weight():
    weight, a, y, target = linear_setup()
    rec_loss, gan_loss = 0.5 * (y - target).pow(2).sum(), 1e-12 * y.sum()
    assert adaptive_weight(rec_loss, gan_loss, weight).item() == pytest.approx(1e4)
    assert adaptive_weight(rec_loss, gan_loss, weight, max_weight=7.0).item() == pytest.approx(7.0)


class RaisingDiscriminator(nn.Module):
    def forward(self, x):
        raise AssertionError("the discriminator must not be called")


class SquaredDistance(nn.Module):
    """A stand-in perceptual loss: mean squared difference per image."""

    def forward(self, x, y):
        return (x - y).pow(2).flatten(1).mean(1)


def generator_setup():
    """x̂ = conv1x1(h), the conv's weight the last layer; a batch of 3 images 2×4×4 in float64."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 4, 4, generator=generator, dtype=torch.float64)
    h = torch.randn(3, 5, 4, 4, generator=generator, dtype=torch.float64)
    last = nn.Conv2d(5, 2, 1).double()
    reconstruction = last(h)
    regularization = torch.tensor(7.5, dtype=torch.float64)
    out = AutoencoderOutput(reconstruction, regularization, {})
    return x, out, last.weight


def expected_nll(x, reconstruction, perceptual_weight, logvar):
    rec = (x - reconstruction).abs() + perceptual_weight * (x - reconstruction).pow(2).mean(dim=(1, 2, 3),
                                                                                           keepdim=True)
    return (rec * math.exp(-logvar) + logvar).sum() / x.shape[0]


def test_generator_loss_before_disc_start_never_calls_the_discriminator():
    x, out, last_layer = generator_setup()
    criterion = AutoencoderLoss(RaisingDiscriminator(), SquaredDistance(), perceptual_weight=0.7,
                                regularization_weight=0.01, disc_start=10)
    logvar = torch.tensor(0.3, dtype=torch.float64)
    loss, scalars = criterion.generator(x, out, step=9, last_layer=last_layer, logvar=logvar)
    nll = expected_nll(x, out.reconstruction, 0.7, 0.3)
    assert loss.item() == pytest.approx((nll + 0.01 * 7.5).item(), rel=1e-12)
    assert scalars["nll"].item() == pytest.approx(nll.item(), rel=1e-12)
    assert scalars["g_loss"].item() == 0.0 and scalars["disc_weight"].item() == 0.0
    assert scalars["rec_l1"].item() == pytest.approx((x - out.reconstruction).abs().mean().item())
    assert scalars["perceptual"].item() == pytest.approx((x - out.reconstruction).pow(2).mean().item())
    assert criterion.discriminator_loss(x, out.reconstruction, step=9) == (None, {})


def test_generator_loss_without_gradients_skips_the_discriminator():
    x, out, last_layer = generator_setup()
    criterion = AutoencoderLoss(RaisingDiscriminator(), disc_start=0)
    with torch.no_grad():
        loss, _ = criterion.generator(x, out, step=5, last_layer=last_layer)
    expected = (x - out.reconstruction).abs().sum() / 3 + 1e-6 * 7.5
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)


def test_losses_after_disc_start_add_the_weighted_hinge_terms():
    x, out, last_layer = generator_setup()
    discriminator = nn.Conv2d(2, 1, 1).double()
    criterion = AutoencoderLoss(discriminator, regularization_weight=0.01, disc_start=3, disc_weight=0.5,
                                disc_factor=0.8)
    loss, scalars = criterion.generator(x, out, step=3, last_layer=last_layer)
    nll = (x - out.reconstruction).abs().sum() / 3
    g_loss = -discriminator(out.reconstruction).mean()
    nll_grad, = torch.autograd.grad(nll, last_layer, retain_graph=True)
    g_grad, = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    disc_weight = 0.5 * nll_grad.norm() / (g_grad.norm() + 1e-4)
    assert scalars["g_loss"].item() == pytest.approx(g_loss.item(), rel=1e-12)
    assert scalars["disc_weight"].item() == pytest.approx(disc_weight.item(), rel=1e-10)
    assert loss.item() == pytest.approx((nll + 0.01 * 7.5 + disc_weight * 0.8 * g_loss).item(), rel=1e-10)

    d_loss, d_scalars = criterion.discriminator_loss(x, out.reconstruction, step=3)
    real, fake = discriminator(x), discriminator(out.reconstruction)
    hinge = 0.5 * ((1 - real).clamp_min(0).mean() + (1 + fake).clamp_min(0).mean())
    assert d_loss.item() == pytest.approx(0.8 * hinge.item(), rel=1e-12)
    assert d_scalars["logits_real"].item() == pytest.approx(real.mean().item())
    d_loss.backward()
    assert last_layer.grad is None  # x̂ is detached for the discriminator
