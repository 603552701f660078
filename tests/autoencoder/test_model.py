"""The autoencoder's shapes for f ∈ {1, 2, 4, 8}, its encode/latents/decode paths, errors and learned logvar."""

import pytest
import torch

from autoencoder import Autoencoder, AutoencoderLoss, DiagonalGaussian


def small(**kwargs):
    torch.manual_seed(0)
    options = dict(in_channels=2, image_size=16, channels=8, latent_channels=3, codebook_size=16)
    return Autoencoder(**{**options, **kwargs})


def images(batch=2):
    return torch.randn(batch, 2, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("regularizer", ["kl", "vq"])
@pytest.mark.parametrize("factor", [1, 2, 4, 8])
def test_shapes(factor, regularizer):
    model = small(factor=factor, regularizer=regularizer)
    x = images()
    side = 16 // factor
    assert model.latent_shape == (3, side, side)
    out = model(x)
    assert out.reconstruction.shape == x.shape and out.regularization.shape == ()
    assert model.latents(x).shape == (2, 3, side, side)
    assert model.decode(model.latents(x)).shape == x.shape
    expected = {"kl"} if regularizer == "kl" else {"vq_commitment", "codebook_perplexity", "codebook_usage"}
    assert set(out.scalars) == expected and all(not value.requires_grad for value in out.scalars.values())


def test_kl_paths_agree_in_eval_mode():
    model = small(factor=2).eval()
    x = images()
    posterior = model.encode(x)
    assert isinstance(posterior, DiagonalGaussian)
    assert torch.equal(model.latents(x), posterior.mode())
    assert torch.allclose(model.decode(model.latents(x)), model.decoder(posterior.mode()))
    sample = model.latents(x, sample=True, generator=torch.Generator().manual_seed(3))
    out = model(x, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(model.decode(sample), out.reconstruction)
    assert out.regularization.item() == pytest.approx(posterior.kl().mean().item(), rel=1e-6)


def test_vq_paths_agree_in_eval_mode():
    model = small(factor=4, regularizer="vq").eval()
    x = images()
    codebook = model.quantizer.codebook.clone()
    h = model.latents(x)
    assert torch.equal(h, model.encode(x))
    assert torch.allclose(model.decode(h), model(x).reconstruction)
    assert torch.equal(model.quantizer.codebook, codebook)


def test_channel_mult_sets_the_widths():
    model = small(factor=4, channel_mult=[1, 2, 4])
    assert model.encoder.layers[-1].in_channels == 32 and model.decoder.out.in_channels == 8
    assert model(images()).reconstruction.shape == (2, 2, 16, 16)


@pytest.mark.parametrize("options, message", [
    (dict(factor=3), "power of two"),
    (dict(factor=4, image_size=18), "not divisible"),
    (dict(regularizer="ae"), "unknown regularizer"),
    (dict(factor=4, channel_mult=[1, 2]), "channel_mult"),
])
def test_bad_options_raise(options, message):
    with pytest.raises(ValueError, match=message):
        small(**options)


def test_learned_logvar_is_a_parameter_with_the_nll_gradient():
    model = small(factor=2, learn_logvar=True)
    assert any(parameter is model.logvar for parameter in model.parameters())
    with torch.no_grad():
        model.logvar.fill_(0.2)
    x = images()
    out = model(x, generator=torch.Generator().manual_seed(0))
    loss, _ = AutoencoderLoss(None).generator(x, out, 0, model.last_layer, model.logvar)
    loss.backward()
    # ∂/∂s Σ (r e^{−s} + s) / B = (N − e^{−s} Σ r) / B
    rec = (x - out.reconstruction).abs().detach()
    expected = (rec.numel() - torch.exp(torch.tensor(-0.2)) * rec.sum()) / 2
    assert model.logvar.grad.item() == pytest.approx(expected.item(), rel=1e-5)
    assert model.last_layer.grad is not None and small(factor=2).logvar is None
