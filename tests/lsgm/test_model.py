"""The LSGM model over all of the VAE's latents: packing, the decoder, and drop_inactive_var."""

import pytest
import torch
from torch import nn

import nvae
import sde
from lsgm.models import INACTIVE_LOGIT, LSGM
from lsgm.score_net import ScoreNet
from lsgm.train import Trainer

from .conftest import tiny_config


class Recorder(nn.Module):
    """A score network that returns a fixed ε' and keeps the input it was given."""

    def forward(self, z_t, t, cond=None, context=None):
        self.seen = z_t.clone()
        return torch.full_like(z_t, 0.3)


def two_scale_model(score_net=None):
    torch.manual_seed(0)
    vae = nvae.NVAE(channels=8, num_scales=2, groups_per_scale=[2, 1], latent_channels=2, dropout=0.0).eval()
    return LSGM(score_net or Recorder(), sde.VPSDE("geometric"), vae=vae, data_shape=(1, 8, 8), levels=17,
                mixing_logit_init=0.0)


def digits_like(n, seed=0):
    levels = torch.randint(0, 17, (n, 1, 8, 8), generator=torch.Generator().manual_seed(seed))
    return levels.float() / 8 - 1


def test_the_score_model_sees_every_group_and_the_decoder_draws_nothing():
    model = two_scale_model()
    assert model.latent_shape == (2 * 2 + 2 * 4, 2, 2)  # 2 top groups + the 4x4 group moved onto the 2x2 grid
    x = digits_like(4)
    torch.manual_seed(1)
    out = model.vae(x)
    terms = model.latent_terms(out)
    assert torch.equal(model.vae.unpack(terms.z)[2], out.eps[2])
    torch.testing.assert_close(terms.log_q, sum(out.log_q_eps))
    torch.manual_seed(2)
    first = model.decode(terms.z, mean=True)
    torch.manual_seed(3)
    assert torch.equal(model.decode(terms.z, mean=True), first)  # a deterministic function of the latents
    # decoding the posterior draw's ε reproduces the decoder of that very pass
    torch.testing.assert_close(model.decoder(terms.z).log_prob(x), out.dist.log_prob(x), atol=1e-4, rtol=1e-5)


def test_channel_kl_adds_up_to_the_group_kls():
    model = two_scale_model()
    x = digits_like(16, seed=4)
    torch.manual_seed(5)
    per_channel = model.channel_kl(x)
    torch.manual_seed(5)
    groups = model.vae.encode(x)  # the same posterior draws
    assert per_channel.shape == (12,) and (per_channel >= 0).all()
    assert per_channel.double().sum().item() == pytest.approx(torch.stack(groups.kl).sum(0).mean().item(), rel=1e-4)


def test_drop_inactive_gives_inactive_channels_the_normal_base_and_no_input():
    net = Recorder()
    model = two_scale_model(net)
    x = digits_like(16, seed=6)
    torch.manual_seed(7)
    kl = model.channel_kl(x)
    threshold = kl.median().item()
    torch.manual_seed(7)
    active = model.drop_inactive(x, threshold)
    assert torch.equal(active, kl >= threshold) and 0 < active.sum() < len(active)
    assert torch.equal(model.active.bool(), active)
    assert (model.mixing_logit[~active] == INACTIVE_LOGIT).all() and (model.mixing_logit[active] == 0.0).all()

    z_t, t = torch.randn(3, *model.latent_shape), torch.full((3,), 0.4)
    eps = model.eps(z_t, t)
    std = model.sde.marginal(t)[1].view(-1, 1, 1, 1)
    assert (net.seen[:, ~active] == 0).all() and torch.equal(net.seen[:, active], z_t[:, active])
    torch.testing.assert_close(eps[:, ~active], (std * z_t)[:, ~active], atol=1e-6, rtol=0)  # the base alone
    torch.testing.assert_close(eps[:, active], (0.5 * std * z_t + 0.5 * 0.3)[:, active])


def test_drop_inactive_needs_a_normal_base():
    model = two_scale_model()
    model.mixing_logit = None
    with pytest.raises(ValueError, match="the mixed or the residual score"):
        model.drop_inactive(digits_like(2))


def test_trainer_drops_inactive_channels_when_the_joint_phase_starts(tmp_path, monkeypatch):
    """At step stage1_steps exactly: the mask of `channel_kl ≥ 0.1` nat is set and logged, and a resumed run keeps
    it from the checkpoint."""
    cfg = tiny_config("train.steps=5", "train.stage1_steps=3", "vae.params.latent_channels=4", "score.residual=false")
    trainer = Trainer(cfg, tmp_path)
    fixed_kl = torch.tensor([0.5, 0.05, 2.0, 0.0])
    monkeypatch.setattr(type(trainer.model), "channel_kl", lambda self, x, batch_size=512: fixed_kl)
    records = [trainer.train_step(next(trainer.stream).x) for _ in range(5)]
    assert ["active_channels" in record for record in records] == [False, False, False, True, False]
    assert records[3]["active_channels"] == 2
    assert torch.equal(trainer.model.active, torch.tensor([1.0, 0.0, 1.0, 0.0]))
    # the optimizer may nudge an inactive logit; the mask keeps those channels at the base exactly (see `eps`)
    torch.testing.assert_close(trainer.model.mixing_logit[[1, 3]].detach(), torch.full((2,), INACTIVE_LOGIT),
                               atol=0.01, rtol=0)
    trainer.save("last.pt")
    trainer.close()
    resumed = Trainer(cfg, tmp_path)
    resumed.close()
    assert torch.equal(resumed.model.active, trainer.model.active)


def test_the_residual_score_is_the_base_plus_the_network_on_active_channels():
    """ε̂ = σ_t z_t + a ⊙ ε'_θ: exactly the N(0, I) prior's ε for a zero network output (as the score network starts),
    the network's output added whole on active channels, nothing of it on dropped ones."""
    torch.manual_seed(0)
    vae = nvae.NVAE(channels=8, num_scales=2, groups_per_scale=[2, 1], latent_channels=2, dropout=0.0).eval()
    model = LSGM(Recorder(), sde.VPSDE("geometric"), vae=vae, data_shape=(1, 8, 8), levels=17, residual=True)
    assert model.mixing_logit is None and model.has_normal_base
    z_t, t = torch.randn(3, *model.latent_shape), torch.tensor([0.1, 0.5, 0.9])
    std = model.sde.marginal(t)[1].view(-1, 1, 1, 1)
    torch.testing.assert_close(model.eps(z_t, t), std * z_t + 0.3)
    model.active[:5] = 0
    eps = model.eps(z_t, t)
    torch.testing.assert_close(eps[:, :5], std * z_t[:, :5])
    torch.testing.assert_close(eps[:, 5:], std * z_t[:, 5:] + 0.3)
    real = LSGM(ScoreNet(12, 2, channels=8, channel_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0),
                sde.VPSDE("geometric"), vae=vae, data_shape=(1, 8, 8), levels=17, residual=True)
    torch.testing.assert_close(real.eps(z_t, t), std * z_t, atol=0, rtol=0)  # the zero-initialised output layer


def test_sampling_is_reproducible_from_the_generator_alone_in_batches_and_output_types(tiny_checkpoint):
    """Every draw (z_1, the SDE sampler's noise, the decoder's pixels; the VAE prior's latents) comes from the
    generator: the global RNG's state does not matter."""
    from lsgm import load

    model = load(tiny_checkpoint)

    def draw(global_seed: int, seed: int = 7, **options):
        torch.manual_seed(global_seed)
        return model.sample(5, generator=torch.Generator().manual_seed(seed), batch_size=2, **options)[0]

    for options in ({"sampler": "sde", "steps": 4}, {"prior": "vae"}):
        first = draw(0, **options)
        assert first.shape == (5, 1, 8, 8) and torch.equal(first, draw(1, **options))
        assert not torch.equal(first, draw(0, seed=8, **options))
    images, nfe = model.sample(3, "heun", steps=3, generator=torch.Generator().manual_seed(0), output_type="unit")
    assert nfe == 5 and images.min() >= 0 and images.max() <= 1
    pixels, _ = model.sample(3, "heun", steps=3, generator=torch.Generator().manual_seed(0), output_type="numpy")
    assert pixels.dtype.name == "uint8" and pixels.shape == (3, 8, 8, 1)
    assert (pixels.astype(int) == (images.permute(0, 2, 3, 1).numpy() * 255).round()).all()
    pictures, _ = model.sample(2, "heun", steps=3, generator=torch.Generator().manual_seed(0), output_type="pil")
    assert [picture.size for picture in pictures] == [(8, 8), (8, 8)]
    with pytest.raises(ValueError, match="output_type"):
        model.sample(2, "heun", steps=3, output_type="jpeg")
