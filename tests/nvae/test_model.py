"""The hierarchical VAE: its latents, its bounds, and the interface the LSGM code relies on."""

import math

import pytest
import torch
from scipy import stats

import nvae
from nvae.distributions import bin_centers

from .conftest import TINY


@pytest.fixture
def vae():
    torch.manual_seed(0)
    return nvae.NVAE(**TINY).eval()


@torch.no_grad()
def test_log_q_of_a_sample_is_the_normal_density(vae, digits):
    out = vae(digits[:8])
    for z, mu, log_std, log_q in zip(out.z, out.mu, out.log_std, out.log_q):
        expected = stats.norm.logpdf(z.double().numpy(), mu.double().numpy(), log_std.double().exp().numpy())
        assert torch.allclose(log_q.double(), torch.from_numpy(expected).flatten(1).sum(1), rtol=1e-5)


def test_output_lists_follow_the_groups_top_first(vae, digits):
    out = vae(digits[:5])
    assert [tuple(z.shape[1:]) for z in out.z] == vae.group_shapes == [(2, 2, 2), (2, 4, 4)]
    assert all(t.shape == (5,) for t in out.log_q + out.log_p + out.kl)
    assert all((kl >= 0).all() for kl in out.kl)
    assert vae.latent_shape == (2 + 2 * 4, 2, 2)  # the finer group's 2×4×4 moved onto the 2×2 top grid
    assert [tuple(kl.shape) for kl in out.kl_elements] == [(5, *shape) for shape in vae.group_shapes]
    for kl, elements in zip(out.kl, out.kl_elements):
        torch.testing.assert_close(elements.flatten(1).sum(1), kl)


def test_pack_is_space_to_depth_and_unpack_inverts_it():
    """Every group reaches the packed tensor once: a finer group's 2×2 block at (2i + a, 2j + b) lands on top cell
    (i, j), channel c·4 + 2a + b; unpack restores the groups bit for bit."""
    torch.manual_seed(0)
    vae = nvae.NVAE(**{**TINY, "groups_per_scale": [3, 1]})
    z = [torch.randn(4, *shape) for shape in vae.group_shapes]
    packed = vae.pack(z)
    assert packed.shape == (4, *vae.latent_shape) == (4, 3 * 2 + 2 * 4, 2, 2)
    assert torch.equal(packed[:, :6], torch.cat(z[:3], 1))
    fine = z[3]
    for c, a, b, i, j in [(0, 0, 0, 0, 0), (1, 1, 0, 1, 1), (0, 1, 1, 0, 1), (1, 0, 1, 1, 0)]:
        assert torch.equal(packed[:, 6 + c * 4 + 2 * a + b, i, j], fine[:, c, 2 * i + a, 2 * j + b])
    assert all(torch.equal(a, b) for a, b in zip(vae.unpack(packed), z))
    assert sorted(packed.flatten().tolist()) == sorted(torch.cat([g.flatten() for g in z]).tolist())
    with pytest.raises(ValueError, match="all 4 latent groups"):
        vae.pack(z[:3])
    with pytest.raises(ValueError, match="unpack needs"):
        vae.unpack(packed[:, :5])


def test_decode_uses_given_latents_and_samples_the_rest(vae, digits):
    x = digits[:6]
    out = vae(x)
    assert torch.allclose(vae.decode(out.z).log_prob(x), out.dist.log_prob(x), atol=1e-5)
    torch.manual_seed(1)
    a = vae.decode([out.z[0], None]).log_prob(x)
    torch.manual_seed(2)
    b = vae.decode([out.z[0], None]).log_prob(x)
    assert not torch.allclose(a, b)  # the lower group is drawn from the prior
    cold = vae.decode([out.z[0], None], temperature=0.0).log_prob(x)
    assert torch.allclose(cold, vae.decode([out.z[0], None], temperature=0.0).log_prob(x))
    with pytest.raises(ValueError, match="batch_size"):
        vae.decode([None, None])
    with pytest.raises(ValueError, match="2 latent groups"):
        vae.decode([None])


@torch.no_grad()
def test_prior_standardised_latents(vae, digits):
    """ε_g = (z_g − μ_p)/σ_p: decoding ε reproduces decoding z, and the change of variables keeps every group's
    log-ratio, log N(ε_g; 0, I) − log q(ε_g) == log p(z_g | z_<g) − log q(z_g): N(0, I) over ε is the VAE's prior."""
    vae = nvae.NVAE(**{**TINY, "groups_per_scale": [2, 1]}).eval()
    x = digits[:6]
    torch.manual_seed(4)
    out = vae(x)
    assert torch.allclose(vae.decode(out.eps, space="eps").log_prob(x), out.dist.log_prob(x), atol=1e-5)
    assert not torch.allclose(out.eps[1], out.z[1])  # a group with a learned conditional prior
    assert torch.equal(out.eps[0], out.z[0])  # the first group's prior is N(0, I)
    for eps, log_q_eps, log_p, log_q, mean, std in zip(out.eps, out.log_q_eps, out.log_p, out.log_q, out.eps_mean,
                                                       out.eps_std):
        log_normal = torch.from_numpy(stats.norm.logpdf(eps.double().numpy())).flatten(1).sum(1)
        assert torch.allclose(log_normal - log_q_eps.double(), (log_p - log_q).double(), atol=1e-4)
        # q(ε_g | x, ε_<g) = N(eps_mean, eps_std²): its density at the draw is log q(ε_g)
        log_posterior = stats.norm.logpdf(eps.double().numpy(), mean.double().numpy(), std.double().numpy())
        assert torch.allclose(torch.from_numpy(log_posterior).flatten(1).sum(1), log_q_eps.double(), atol=1e-4)
    with pytest.raises(ValueError, match="space"):
        vae.decode(out.eps, space="x")


@torch.no_grad()
def test_mean_encoding_is_the_chain_of_posterior_means(vae, digits):
    latents = vae.encode(digits[:4], mean=True)
    assert all(torch.equal(z, mu) for z, mu in zip(latents.z, latents.mu))
    again = vae.encode(digits[:4], mean=True)
    assert all(torch.equal(a, b) for a, b in zip(latents.eps, again.eps))


def test_samples_lie_on_the_bins(vae):
    x = vae.sample(7)
    assert x.shape == (7, 1, 8, 8)
    assert torch.isin(x, bin_centers(17)).all()
    m = vae.sample(3, temperature=0.5, mean=True)
    assert m.abs().max() <= 1.0


def test_loss_terms_add_up(vae, digits):
    x = digits[:16]
    torch.manual_seed(0)
    terms = vae.loss(x)
    assert torch.allclose(terms["elbo_nats"], -(terms["recon"] + terms["kl_groups"].sum(1)))
    assert torch.allclose(terms["bpd"], -terms["elbo_nats"] / (64 * math.log(2)))
    assert terms["loss"].item() == pytest.approx(-terms["elbo_nats"].mean().item(), rel=1e-6)
    torch.manual_seed(0)
    warm = vae.loss(x, kl_weight=0.1, kl_balance=False)
    expected = (warm["recon"] + 0.1 * warm["kl_groups"].sum(1)).mean()
    assert warm["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_iwae_with_one_sample_is_the_single_sample_elbo(vae, digits):
    x = digits[:16]
    torch.manual_seed(3)
    nll = vae.nll(x, k=1)
    torch.manual_seed(3)
    out = vae(x)
    elbo = out.dist.log_prob(x) + sum(lp - lq for lp, lq in zip(out.log_p, out.log_q))
    assert torch.allclose(nll, -elbo, rtol=1e-5)


def test_iwae_on_a_trained_model(trained):
    vae, val, _, _ = trained
    torch.manual_seed(0)
    analytic = -vae.loss(val)["elbo_nats"].mean().item()
    one = vae.nll(val, k=1)
    se = one.std().item() / math.sqrt(one.numel())
    assert one.mean().item() == pytest.approx(analytic, abs=4 * se + 0.05)  # k = 1 is the ELBO on average
    k16 = vae.nll(val, k=16).mean().item()
    assert k16 < analytic and k16 < one.mean().item()  # tighter, never larger
    k64 = vae.nll(val, k=64, max_batch=2000).mean().item()  # chunked: 2000 // 144 = 13 samples a pass
    assert k64 <= k16 + 0.05


@pytest.mark.parametrize("output,levels,channels", [("logistic_mixture", 256, 3), ("gaussian", 17, 1),
                                                    ("bernoulli", 2, 1)])
def test_other_outputs_and_batch_norm_train(output, levels, channels):
    torch.manual_seed(0)
    vae = nvae.NVAE(in_channels=channels, image_size=16, levels=levels, output=output, norm="batch",
                    **{**TINY, "num_scales": 3})
    x = bin_centers(levels)[torch.randint(0, levels, (4, channels, 16, 16))]
    terms = vae.loss(x, kl_weight=0.5, kl_balance=False)
    terms["loss"].backward()
    # a probability mass on discrete data: −log p(x | z) ≥ 0, KL ≥ 0, and the loss weighs the KL by one half
    assert (terms["recon"] >= 0).all() and (terms["kl_groups"] >= 0).all()
    expected = (terms["recon"] + 0.5 * terms["kl_groups"].sum(1)).mean()
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert all(torch.isfinite(p.grad).all() for p in vae.parameters() if p.grad is not None)
    assert vae.group_shapes[0] == (2, 2, 2) and vae.sample(2).shape == (2, channels, 16, 16)


def test_config_rebuilds_the_model(vae):
    copy = nvae.NVAE(**vae.config)
    copy.load_state_dict(vae.state_dict())  # same modules, same shapes
    assert copy.config == vae.config == {**nvae.NVAE().config, **TINY}


def test_configuration_errors_name_the_fix():
    with pytest.raises(ValueError, match="divisible"):
        nvae.NVAE(image_size=8, num_scales=3, num_preprocess=2)
    with pytest.raises(ValueError, match="groups_per_scale"):
        nvae.NVAE(groups_per_scale=[1, 2, 3])
    with pytest.raises(ValueError, match="choose one of"):
        nvae.NVAE(output="poisson")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda(digits):
    from nvae.train import FitConfig, make_optimizer, training_loss

    torch.manual_seed(0)
    vae = nvae.NVAE(**TINY).cuda()
    x = digits[:64].cuda()
    cfg = FitConfig()
    optimizer = make_optimizer(vae.parameters(), cfg)
    for batch in x.split(16):
        optimizer.zero_grad(set_to_none=True)
        training_loss(vae, batch, 1.0, cfg)["loss"].backward()
        optimizer.step()
    assert vae.eval().nll_bpd(x, k=4).mean().item() < 2 * math.log2(17)
    assert vae.sample(3).device.type == "cuda"
    assert vae.decode([vae.encode(x[:2]).z[0], None]).mean().device.type == "cuda"
