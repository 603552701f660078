"""The joint objective's terms against closed forms and hand computation."""

import math

import pytest
import torch
from torch import nn

import sde
from lsgm.models import DDPM, LSGM, PixelSGM
from lsgm.objective import cross_entropy, cross_entropy_constant, denoising_terms, joint_loss, simple_loss
from sde.gaussian import gaussian


class ExactEps(nn.Module):
    """A 'network' that returns the exact ε of Gaussian data N(0, s²I) under the VP-SDE (no parameters)."""

    def __init__(self, vp, data_std):
        super().__init__()
        self.vp, self.data = vp, gaussian(torch.zeros(4), torch.full((4,), data_std**2))

    def forward(self, z_t, t, cond=None, context=None):
        mean_coeff, std = self.vp.marginal(t)
        return self.data.eps(z_t, mean_coeff, std).to(z_t.dtype)


class Zero(nn.Module):
    def forward(self, z_t, t, cond=None, context=None):
        return torch.zeros_like(z_t)


def pixel_model(net, vp, mixed=True, logit=-3.0, shape=(4, 1, 1)):
    return PixelSGM(net, vp, data_shape=shape, levels=None, mixing_logit_init=logit, mixed=mixed)


@pytest.mark.parametrize("schedule,scheme", [("linear", "ll_iw"), ("geometric", "ll_iw"), ("linear", "ll_uniform")])
def test_cross_entropy_with_normal_prior_is_exact(schedule, scheme):
    """Mixing logit −∞: ε̂ = σ_t z_t is the exact ε of a N(0, I) prior, whose VP marginals stay N(0, I).
    Then CE(q(z_ε|z_0) ‖ N(0, I)) = D/2 log 2π + ½(m_ε²‖z_0‖² + Dσ²_ε) exactly."""
    torch.manual_seed(0)
    vp = sde.VPSDE(schedule)
    model = pixel_model(Zero(), vp, logit=-math.inf).double()
    t_eps, n = 1e-2, 200_000
    z0 = torch.tensor([[0.7, -1.2, 0.3, 2.0]], dtype=torch.float64).reshape(1, 4, 1, 1).expand(n, 4, 1, 1)
    terms = denoising_terms(model, z0, scheme, t_eps)
    estimates = terms.likelihood() + cross_entropy_constant(vp, z0, t_eps)
    mean_coeff, std = vp.marginal(torch.tensor(t_eps, dtype=torch.float64))
    exact = 0.5 * (4 * math.log(2 * math.pi) + mean_coeff**2 * z0[0].pow(2).sum() + 4 * std**2)
    error = estimates.std().item() / math.sqrt(n)
    assert abs(estimates.mean().item() - exact.item()) < 4 * error, (estimates.mean().item(), exact.item(), error)
    # the mixed model's estimate subtracts the base's own DSM error and adds its closed form: exact for every draw
    assert torch.allclose(cross_entropy(model, terms, z0, t_eps), exact.expand(n), rtol=1e-7)


def test_cross_entropy_over_the_base_keeps_the_mean_and_cuts_the_variance():
    """With a network correction (the exact ε of N(0, 0.6²) data, mixed at α = 0.2), the control-variate estimate
    CE_N + w_ll(‖ε − ε̂‖² − ‖ε − σ_t z_t‖²) has the plain DSM estimate's mean and a smaller variance."""
    torch.manual_seed(3)
    vp = sde.VPSDE("geometric")
    model = pixel_model(ExactEps(vp, 0.6), vp, logit=math.log(0.2 / 0.8)).double()
    t_eps, n = 1e-2, 200_000
    z0 = (torch.tensor([0.5, -0.2, 0.1, 0.8], dtype=torch.float64) + 0.3 * torch.randn(n, 4, dtype=torch.float64))
    z0 = z0.reshape(n, 4, 1, 1)
    with torch.no_grad():
        terms = denoising_terms(model, z0, "ll_iw", t_eps)
        plain = terms.likelihood() + cross_entropy_constant(vp, z0, t_eps)
        controlled = cross_entropy(model, terms, z0, t_eps)
    difference = controlled - plain  # the same draws: the paired difference has mean 0
    assert abs(difference.mean().item()) < 4 * difference.std().item() / math.sqrt(n)
    assert controlled.var().item() < 0.5 * plain.var().item(), (controlled.var().item(), plain.var().item())


def test_cross_entropy_with_exact_gaussian_score_matches_closed_form():
    """A prior p_0 = N(0, s²I) with its exact ε: for q(z_0) = N(μ, v I) the CE of the diffused z_ε is
    CE = D/2 log 2π(m²s² + σ²) + (m²(‖μ‖²/D + v) + σ²)·D/(2(m²s² + σ²)),  at t = ε (m, σ of t_ε)."""
    torch.manual_seed(1)
    vp, data_std = sde.VPSDE("linear"), 0.6
    model = pixel_model(ExactEps(vp, data_std), vp, mixed=False).double()
    t_eps, n, post_std = 1e-2, 200_000, 0.3
    mu = torch.tensor([0.5, -0.2, 0.1, 0.8], dtype=torch.float64)
    z0 = (mu + post_std * torch.randn(n, 4, dtype=torch.float64)).reshape(n, 4, 1, 1)
    terms = denoising_terms(model, z0, "ll_iw", t_eps)
    estimates = terms.likelihood() + cross_entropy_constant(vp, z0, t_eps)
    m, s = (v.item() for v in vp.marginal(torch.tensor(t_eps, dtype=torch.float64)))
    p_var = m**2 * data_std**2 + s**2
    second_moment = m**2 * (mu.pow(2).sum().item() + 4 * post_std**2) + 4 * s**2
    exact = 0.5 * 4 * math.log(2 * math.pi * p_var) + 0.5 * second_moment / p_var
    # the prior of the SGM is N(0, I) at t = 1 while the exact marginal is N(0, m_1²s² + σ_1²): a tiny mismatch
    error = estimates.std().item() / math.sqrt(n)
    assert abs(estimates.mean().item() - exact) < 4 * error + 1e-3, (estimates.mean().item(), exact, error)


def test_mixed_score_at_minus_infinity_is_the_normal_prior():
    vp = sde.VPSDE()
    net = nn.Module()
    net.forward = lambda z, t, cond=None, context=None: torch.full_like(z, 123.0)
    model = pixel_model(net, vp, logit=-math.inf)
    z_t, t = torch.randn(5, 4, 1, 1), torch.rand(5)
    std = vp.marginal(t)[1]
    assert torch.equal(model.eps(z_t, t), std[:, None, None, None] * z_t)
    score = -model.eps(z_t, t) / std[:, None, None, None]
    assert torch.allclose(score, -z_t)  # ∇ log N(z; 0, I)


def test_mixed_score_interpolates_per_channel():
    vp = sde.VPSDE()
    net = nn.Module()
    net.forward = lambda z, t, cond=None, context=None: torch.ones_like(z)
    model = pixel_model(net, vp, logit=0.0, shape=(2, 3, 3))
    with torch.no_grad():
        model.mixing_logit.copy_(torch.tensor([0.0, 2.0]))
    z_t, t = torch.randn(4, 2, 3, 3), torch.full((4,), 0.5)
    std = vp.marginal(t)[1][0]
    alpha = torch.sigmoid(torch.tensor([0.0, 2.0]))
    expected = torch.stack([(1 - alpha[c]) * std * z_t[:, c] + alpha[c] for c in range(2)], 1)
    assert torch.allclose(model.eps(z_t, t), expected, atol=1e-6)


def test_ddpm_special_case_loss_is_l_simple():
    """Discrete chain: the loss is ‖ε − ε_θ(√ᾱ_i x_0 + √(1−ᾱ_i) ε, i/T)‖² with i ~ U{1..T} — recomputed by hand."""
    vp = sde.VPSDE("linear")
    calls = []

    class Recorder(nn.Module):
        def forward(self, z, t, cond=None, context=None):
            calls.append((z.clone(), t.clone()))
            return 0.1 * z

    model = DDPM(Recorder(), vp, 1000, data_shape=(1, 2, 2), levels=None)
    x0 = torch.randn(6, 1, 2, 2)
    torch.manual_seed(5)
    loss = simple_loss(model, model.schedule, x0)
    torch.manual_seed(5)
    steps = torch.randint(1, 1001, (6,))
    noise = torch.randn_like(x0)
    alpha_bar = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64).neg().add(1).cumprod(0)[steps - 1].float()
    x_t = alpha_bar.sqrt()[:, None, None, None] * x0 + (1 - alpha_bar).sqrt()[:, None, None, None] * noise
    assert torch.allclose(calls[0][0], x_t, atol=1e-6)
    assert torch.allclose(calls[0][1], steps / 1000.0)
    assert torch.allclose(loss, (noise - 0.1 * x_t).pow(2).sum((1, 2, 3)), atol=1e-5)


class TinyVAE(nn.Module):
    """A two-group stand-in with the NVAE output interface and hand-checkable numbers; the score model must see
    every group's prior-standardised ε (not z), and the bound takes the VAE's analytic KLs."""

    latent_shape = (3, 1, 1)
    group_shapes = [(2, 1, 1), (1, 1, 1)]

    def forward(self, x):
        from types import SimpleNamespace

        z_top = torch.tensor([[0.5, -1.0]]).reshape(1, 2, 1, 1).expand(x.shape[0], 2, 1, 1)
        z_low = torch.full((x.shape[0], 1, 1, 1), 0.25)
        dist = SimpleNamespace(log_prob=lambda data: -data.flatten(1).pow(2).sum(1))
        per_sample = lambda value: torch.full((x.shape[0],), value)  # noqa: E731
        return SimpleNamespace(z=[3 * z_top, z_low], eps=[z_top, 7 * z_low], kl=[per_sample(1.1), per_sample(0.4)],
                               log_q=[per_sample(-1.5), per_sample(0.2)], log_q_eps=[per_sample(-2.5), per_sample(5.0)],
                               log_p=[per_sample(-9.0), per_sample(-0.7)], eps_mean=[z_top, 7 * z_low],
                               eps_std=[torch.ones_like(z_top), torch.ones_like(z_low)], dist=dist)

    def pack(self, z):
        return torch.cat(z, 1)


def test_joint_loss_terms_by_hand():
    vp = sde.VPSDE("linear")
    model = LSGM(Zero(), vp, vae=TinyVAE(), data_shape=(1, 2, 2), mixing_logit_init=0.0)
    x = torch.full((3, 1, 2, 2), 0.5)
    torch.manual_seed(2)
    loss = joint_loss(model, x, kl_weight=0.5, scheme_p="ll_iw", t_eps=1e-2)
    torch.manual_seed(2)
    draw = sde.sample_time(vp, "ll_iw", 3, 1e-2)
    noise = torch.randn(3, 3, 1, 1)
    z0 = torch.tensor([0.5, -1.0, 1.75]).reshape(1, 3, 1, 1)  # ε of both groups: the second is 7 · 0.25
    mean_coeff, std = vp.marginal(draw.t)
    z_t = mean_coeff[:, None, None, None] * z0 + std[:, None, None, None] * noise
    eps_hat = 0.5 * std[:, None, None, None] * z_t  # α = sigmoid(0) = ½, network 0
    squared_error = (noise - eps_hat).pow(2).sum((1, 2, 3))
    base_squared_error = (noise - std[:, None, None, None] * z_t).pow(2).sum((1, 2, 3))
    m_eps, v_eps = vp.marginal(1e-2)[0].item(), vp.var(1e-2).item()
    normal_cross_entropy = 0.5 * (3 * (math.log(2 * math.pi) + v_eps) + m_eps**2 * 4.3125)  # ‖z_0‖² = 4.3125
    log_normal = -0.5 * (4.3125 + 3 * math.log(2 * math.pi))
    excess = draw.weight_ll * (squared_error - base_squared_error) + normal_cross_entropy + log_normal
    assert torch.allclose(loss.recon, torch.full((3,), 4 * 0.25))
    assert torch.allclose(loss.kl, torch.full((3,), 1.5))
    assert torch.allclose(loss.prior_excess, excess, rtol=1e-5, atol=1e-6)
    assert torch.allclose(loss.nelbo, 1.0 + 1.5 + excess, rtol=1e-5)
    assert loss.loss_vae.item() == pytest.approx((1.0 + 0.5 * (1.5 + excess)).mean().item(), rel=1e-5)
    assert loss.loss_score.item() == pytest.approx((draw.weight * squared_error).mean().item(), rel=1e-5)


def test_a_joint_model_at_the_normal_base_has_the_vae_bound():
    """Mixing logit −∞ on a real NVAE: the joint −ELBO is the VAE's own (analytic-KL) −ELBO for the same posterior
    draw, up to the closed-form t_ε term ½((m_ε² − 1)‖ε_0‖² + D σ²_ε) of the cross-entropy at t_ε."""
    import nvae

    torch.manual_seed(0)
    vae = nvae.NVAE(channels=8, num_scales=2, groups_per_scale=[2, 1], latent_channels=2, cells_per_group=1,
                    num_preprocess=1, dropout=0.0).eval()
    vp = sde.VPSDE("geometric")
    model = LSGM(Zero(), vp, vae=vae, data_shape=(1, 8, 8), levels=17, mixing_logit_init=-math.inf)
    x = torch.linspace(-1, 1, 17)[torch.randint(17, (6, 1, 8, 8))]
    torch.manual_seed(1)
    loss = joint_loss(model, x, t_eps=1e-2)
    torch.manual_seed(1)
    vae_terms = vae.loss(x, kl_balance=False)
    torch.manual_seed(1)
    z0 = vae.pack(vae(x).eps)
    m_eps, v_eps = vp.marginal(1e-2)[0].item(), vp.var(1e-2).item()
    t_eps_term = 0.5 * ((m_eps**2 - 1) * z0.flatten(1).pow(2).sum(1) + z0[0].numel() * v_eps)
    assert torch.allclose(loss.nelbo, -vae_terms["elbo_nats"] + t_eps_term, atol=1e-4)
    assert t_eps_term.abs().max() < 1e-3  # LSGM's t_ε leaves the bound where the VAE has it


def test_posterior_mixture_target_keeps_the_bound_and_changes_only_the_score_loss():
    """score_target="posterior_mixture" on a real NVAE: for the same draws the VAE's loss and the bound are those of
    the noise target; the score model's loss is its network's error against E[ε | z_t] under the batch's posteriors
    (recomputed here from the pass's posterior means and variances)."""
    import nvae

    torch.manual_seed(0)
    vae = nvae.NVAE(channels=8, num_scales=2, groups_per_scale=[2, 1], latent_channels=2, cells_per_group=1,
                    num_preprocess=1, dropout=0.0).eval()
    vp = sde.VPSDE("cosine")
    model = LSGM(Zero(), vp, vae=vae, data_shape=(1, 8, 8), levels=17, residual=True)
    x = torch.linspace(-1, 1, 17)[torch.randint(17, (6, 1, 8, 8))]
    results = {}
    for target in ("noise", "posterior_mixture"):
        torch.manual_seed(1)
        results[target] = joint_loss(model, x, scheme_p="drop_all_uniform", t_eps=1e-2, score_target=target)
    plain, mixture = results["noise"], results["posterior_mixture"]
    torch.testing.assert_close(mixture.loss_vae, plain.loss_vae)
    torch.testing.assert_close(mixture.nelbo, plain.nelbo)
    # the same draws by hand: the residual score with a zero network is σ_t z_t
    torch.manual_seed(1)
    out = vae(x)
    z0, means = vae.pack(out.eps), vae.pack(out.eps_mean)
    variances = vae.pack(out.eps_std).square()
    draw = sde.sample_time(vp, "drop_all_uniform", 6, 1e-2)
    t = draw.t
    noise = torch.randn_like(z0)
    mean_coeff, std = vp.marginal(t)
    z_t = mean_coeff.view(-1, 1, 1, 1) * z0 + std.view(-1, 1, 1, 1) * noise
    batch_posteriors = sde.gaussian.GaussianMixture(means.flatten(1).double(), variances.flatten(1).double())
    target = batch_posteriors.eps(z_t.flatten(1).double(), mean_coeff.double(), std.double()).view_as(z_t).float()
    expected = (draw.weight * (target - std.view(-1, 1, 1, 1) * z_t).flatten(1).pow(2).sum(1)).mean()
    torch.testing.assert_close(mixture.loss_score, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(mixture.loss_score, plain.loss_score)
    with pytest.raises(ValueError, match="score target"):
        joint_loss(model, x, score_target="posterior")
