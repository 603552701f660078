"""PatchGAN output shapes, the too-small error and latent-diffusion's initialisation."""

import pytest
import torch

from autoencoder import PatchDiscriminator


@pytest.mark.parametrize("size, layers, norm", [(8, 1, "batch"), (32, 3, "batch"), (32, 3, "group"), (8, 1, "none")])
def test_patch_logits_shape(size, layers, norm):
    discriminator = PatchDiscriminator(in_channels=2, channels=8, layers=layers, norm=norm)
    logits = discriminator(torch.randn(3, 2, size, size))
    assert logits.shape == (3, 1, size // 2**layers - 2, size // 2**layers - 2)


@pytest.mark.parametrize("size, layers", [(4, 1), (16, 3)])
def test_too_small_images_raise(size, layers):
    with pytest.raises(ValueError, match="too small"):
        PatchDiscriminator(channels=4, layers=layers)(torch.randn(1, 1, size, size))


def test_bad_options_raise():
    with pytest.raises(ValueError, match="norm"):
        PatchDiscriminator(norm="layer")
    with pytest.raises(ValueError, match="layers"):
        PatchDiscriminator(layers=0)


def test_initialisation_and_channel_cap():
    torch.manual_seed(0)
    discriminator = PatchDiscriminator(channels=16, layers=4)
    convs = [module for module in discriminator.modules() if isinstance(module, torch.nn.Conv2d)]
    assert [conv.out_channels for conv in convs] == [16, 32, 64, 128, 128, 1]
    weights = torch.cat([conv.weight.flatten() for conv in convs])
    assert weights.mean().abs() < 1e-3 and weights.std().item() == pytest.approx(0.02, rel=0.05)
    scales = torch.cat([module.weight for module in discriminator.modules()
                        if isinstance(module, torch.nn.BatchNorm2d)])
    assert scales.mean().item() == pytest.approx(1.0, abs=0.01) and scales.std().item() == pytest.approx(0.02, rel=0.3)
