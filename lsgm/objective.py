"""LSGM's training objectives, with every term returned for logs and tests.

For data x, posterior q(z|x) and an SGM prior over all of the latents z (every group in the VAE's
prior-standardised coordinates ε, packed on one grid, see `lsgm.models.latent`), the negative ELBO is
    −ELBO(x) = −log p(x|z) + log q(z|x) + CE(q(z|x) ‖ p_SGM).
The cross-entropy of the diffused latent z_ε against the SGM's marginal is, by denoising score matching,
    CE = ∫_ε^1 w_ll(t) E‖ε − ε̂(z_t, t)‖² dt + C(z_0),   w_ll = β/(2σ²_t),
    C(z_0) = D/2 [log 2π + σ²_1 − log σ²_1 + log σ²_ε] + ½ m_1² ‖z_0‖²,
which follows from dCE(q_t‖p_t)/dt along the diffusion with p_1 = N(0, I): the prior's cross-entropy
at t = 1 plus the DSM integral, the data-independent parts collected in C (LSGM App. A; its
½(1 + log 2πσ²_ε) per dimension is C at σ²_1 = 1). The integral is estimated with the importance
weights of `sde.sample_time`. The VAE's update minimises −ELBO with likelihood weighting; the score
model's update minimises the DSM term with its own weighting (LSGM's `iw_sample_p`), reusing the same
draw of t (`reweight_p_samples`) or a separate one.

With the mixed score the N(0, I) base serves as a control variate: its CE is known in closed form,
    CE_N(z_0) = D/2 log 2π + ½(m_ε² ‖z_0‖² + D σ²_ε),
and E[w_ll ‖ε − σ_t z_t‖²] + C(z_0) = CE_N(z_0), so
    CE = CE_N(z_0) + E[w_ll (‖ε − ε̂(z_t, t)‖² − ‖ε − σ_t z_t‖²)]
has the same mean with the base's share of the noise removed: it is exact at α = 0, where the joint phase
starts, and its variance grows with the network's correction only.

The score model's own loss may replace the noise ε by a target with less noise (`score_target="posterior_mixture"`):
E[ε | z_t] when z_0 is drawn from the mixture of the batch's posteriors q(z|x_b), each a diagonal Gaussian,
    ε*(z_t) = σ_t Σ_b w_b (z_t − m_t μ_b)/(m_t² v_b + σ²_t),   w_b ∝ N(z_t; m_t μ_b, m_t² v_b + σ²_t)
(`sde.gaussian.diagonal_mixture_eps`; the Stable Target Field of Xu et al. 2023 with the reference points widened to
their posteriors). The posteriors are wide (their std in ε is 0.5–1 on digits), so below σ_t ≈ 0.3 the plain target
ε is the posterior's noise more than the signal (10–100×, README), which ε* averages out; the mixture over the batch
also averages over which image z_t came from. The VAE's cross-entropy keeps the plain DSM estimate, so the bound is
unchanged. Two approximations: the reference is the batch, not the whole aggregate posterior (larger references
measured no better, README), and a group's posterior is taken at the pass's draw of the groups above it (the mixture
ignores that lower groups' means move with that draw; not measured).

The bound is estimated with the VAE's analytic KLs. In ε the VAE's own prior is N(0, I), and the KL is invariant
under z ↔ ε, so E_q[log q − log p] over every group is Σ_g KL(q(z_g|x, z_<g) ‖ p(z_g|z_<g)), and
    −ELBO(x) = −log p(x|z) + Σ_g KL_g + excess(z),   excess = CE(q ‖ p_SGM) − CE(q ‖ N(0, I)),
the VAE-alone objective plus the SGM's excess cross-entropy (negative where the SGM beats the VAE's prior),
estimated per sample as the CE estimate above + log N(z; 0, I). Same mean as the single-sample
log q + CE, without the single-sample entropy's noise: a joint model whose SGM has learned nothing
trains exactly like the VAE alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sde import VPSDE, expand_like, sample_time
from sde.gaussian import diagonal_mixture_eps

SCORE_TARGETS = ("noise", "posterior_mixture")


def normal_cross_entropy(sde: VPSDE, z0: torch.Tensor, t_eps: float) -> torch.Tensor:
    """CE(q(z_ε | z_0) ‖ N(0, I)) = D/2 log 2π + ½(m_ε² ‖z_0‖² + D σ²_ε)  (B,): the mixed score's base, exactly."""
    dims = z0[0].numel()
    mean_coeff, var = sde.marginal(t_eps)[0].item(), sde.var(t_eps).item()
    return 0.5 * (dims * (math.log(2 * math.pi) + var) + mean_coeff**2 * z0.flatten(1).pow(2).sum(1))


def cross_entropy_constant(sde: VPSDE, z0: torch.Tensor, t_eps: float) -> torch.Tensor:
    """C(z_0) = D/2 [log 2π + σ²_1 − log σ²_1 + log σ²_ε] + ½ m_1² ‖z_0‖²  (B,), the CE's data-light part."""
    dims = z0[0].numel()
    var_1, var_eps = sde.var(1.0).item(), sde.var(t_eps).item()
    mean_coeff_1 = sde.marginal(1.0)[0].item()
    per_dim = 0.5 * (math.log(2 * math.pi) + var_1 - math.log(var_1) + math.log(var_eps))
    return dims * per_dim + 0.5 * mean_coeff_1**2 * z0.flatten(1).pow(2).sum(1)


@dataclass
class DenoisingTerms:
    """Draws of t and ε for a batch of z_0, each field (draws, B): the squared error and both importance weights."""

    t: torch.Tensor
    squared_error: torch.Tensor  # ‖ε − ε̂(z_t, t)‖²
    weight: torch.Tensor  # the scheme's own objective weight / proposal
    weight_ll: torch.Tensor  # likelihood weight / proposal
    base_squared_error: torch.Tensor  # ‖ε − σ_t z_t‖², the N(0, I) prior's error for the same draw
    target_squared_error: torch.Tensor  # ‖ε* − ε̂(z_t, t)‖² for the score model's target ε* (ε itself by default)

    def objective(self) -> torch.Tensor:
        """The scheme's weighted denoising loss per sample against the score model's target, averaged over the
        draws (B,)."""
        return (self.weight * self.target_squared_error).mean(0)

    def likelihood(self) -> torch.Tensor:
        """The likelihood-weighted DSM estimate per sample, averaged over the draws (B,) (the CE without C)."""
        return (self.weight_ll * self.squared_error).mean(0)

    def likelihood_over_base(self) -> torch.Tensor:
        """The likelihood-weighted DSM estimate minus the N(0, I) prior's for the same draws (B,)."""
        return (self.weight_ll * (self.squared_error - self.base_squared_error)).mean(0)


def cross_entropy(model, terms: DenoisingTerms, z0: torch.Tensor, t_eps: float) -> torch.Tensor:
    """The CE estimate of the diffused z_ε under the model's SGM (B,): CE_N(z_0) + the DSM difference to the base
    for a mixed score (see the module docstring), DSM + C(z_0) otherwise."""
    if model.has_normal_base:
        return terms.likelihood_over_base() + normal_cross_entropy(model.sde, z0, t_eps)
    return terms.likelihood() + cross_entropy_constant(model.sde, z0, t_eps)


def posterior_mixture_eps(model, z_t: torch.Tensor, t: torch.Tensor,
                          posteriors: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The score model's target ε*(z_t) = E[ε | z_t] for z_0 drawn from the mixture of the diagonal Gaussian
    `posteriors` (means, variances), each (K, *shape) (module docstring). A channel the VAE leaves unused has the
    same posterior N(0, 1) in every image, so it does not move the responsibilities, and its target is the N(0, I)
    base's σ_t z_t, which an inactive channel's ε̂ is (`drop_inactive`)."""
    mean_coeff, std = model.sde.marginal(t)
    means, variances = posteriors
    return diagonal_mixture_eps(z_t.flatten(1), mean_coeff, std, means.flatten(1), variances.flatten(1)).view_as(z_t)


def denoising_terms(model, z0: torch.Tensor, scheme: str, t_eps: float, inputs: dict | None = None,
                    draws: int = 1, posteriors: tuple[torch.Tensor, torch.Tensor] | None = None) -> DenoisingTerms:
    """Draw t ~ scheme and ε ~ N(0, I) `draws` times per z_0, diffuse z_t = m_t z_0 + σ_t ε, and score ε̂(z_t, t)
    (with the score network's condition `inputs`, see `LSGM.condition_inputs`; none: a conditional model's
    unconditional ε̂). More draws cut the estimates' variance for the price of score-network calls only. With
    `posteriors` (means, variances) of the batch's q(z|x), detached, the score model's target is
    `posterior_mixture_eps`; the likelihood terms keep ε."""
    batch = z0.shape[0]
    z0 = z0.repeat(draws, *([1] * (z0.dim() - 1))) if draws > 1 else z0
    inputs = {k: v.repeat(draws, *([1] * (v.dim() - 1))) for k, v in (inputs or {}).items()}
    draw = sample_time(model.sde, scheme, z0.shape[0], t_eps, device=z0.device, dtype=z0.dtype)
    noise = torch.randn_like(z0)
    z_t = model.sde.perturb(z0, draw.t, noise)
    eps = model.guided_eps(z_t, draw.t, inputs)
    squared_error = (noise - eps).flatten(1).pow(2).sum(1)
    target_squared_error = squared_error
    if posteriors is not None:
        with torch.no_grad():
            target = posterior_mixture_eps(model, z_t.detach(), draw.t, posteriors)
        target_squared_error = (target - eps).flatten(1).pow(2).sum(1)
    base_squared_error = (noise - expand_like(model.sde.marginal(draw.t)[1], z_t) * z_t).flatten(1).pow(2).sum(1)
    fields = (draw.t, squared_error, draw.weight, draw.weight_ll, base_squared_error, target_squared_error)
    return DenoisingTerms(*(field.view(draws, batch) for field in fields))


def prior_excess(model, terms: DenoisingTerms, z0: torch.Tensor, t_eps: float) -> torch.Tensor:
    """CE(q ‖ p_SGM) − CE(q ‖ N(0, I)) per sample (B,): the `cross_entropy` estimate plus log N(z_0; 0, I)."""
    return cross_entropy(model, terms, z0, t_eps) + model.sde.prior_logp(z0)


@dataclass
class JointLoss:
    """The terms of one joint step; per-sample terms are (B,) nats, losses are scalars."""

    recon: torch.Tensor  # −log p(x|z)
    kl: torch.Tensor  # Σ_g KL(q(z_g|x, z_<g) ‖ p(z_g|z_<g)), the VAE's own prior, every group
    prior_excess: torch.Tensor  # CE of the latents under the SGM minus under N(0, I) (DSM estimate)
    dsm: torch.Tensor  # the score model's weighted DSM term
    nelbo: torch.Tensor  # recon + kl + prior_excess
    loss_vae: torch.Tensor  # minimised over the VAE's parameters
    loss_score: torch.Tensor  # minimised over the score model's parameters

    def scalars(self) -> dict[str, torch.Tensor]:
        """Batch means of every term, detached (0-d tensors: no device synchronisation until they are read)."""
        return {name: value.detach().float().mean() for name, value in vars(self).items()}


def joint_loss(
    model,
    x: torch.Tensor,
    kl_weight: float = 1.0,
    scheme_p: str = "ll_iw",
    scheme_q: str = "reweight_p_samples",
    t_eps: float = 1e-2,
    inputs: dict | None = None,
    draws: int = 1,
    score_target: str = "noise",
) -> JointLoss:
    """LSGM's joint objective for a batch x (model.vae must exist).

    loss_vae   = mean[−log p(x|z) + kl_weight·(Σ_g KL_g + excess)]   (likelihood weighting, see the module docstring);
    loss_score = mean[w_p(t)/r(t) · ‖ε − ε̂‖²]  with the `scheme_p` weighting, z_0 detached.
    `scheme_q="reweight_p_samples"` reuses the score model's draw for the CE; any `sde.SCHEMES` name draws anew.
    `draws` (t, ε) pairs per latent average both DSM estimates. `score_target` (`SCORE_TARGETS`): the score model's
    target, ε itself or `posterior_mixture_eps` of the batch's posteriors (the VAE's terms keep ε).
    """
    out = model.vae(x)
    latents = model.latent_terms(out)
    z0 = latents.z
    recon = -out.dist.log_prob(x)
    kl = torch.stack(out.kl, 1).sum(1)

    draw_p = denoising_terms(model, z0, scheme_p, t_eps, inputs, draws, score_posteriors(latents, score_target))
    draw_q = draw_p if scheme_q == "reweight_p_samples" else denoising_terms(model, z0, scheme_q, t_eps, inputs, draws)
    excess = prior_excess(model, draw_q, z0, t_eps)
    dsm = draw_p.objective()
    loss_vae = (recon + kl_weight * (kl + excess)).mean()
    return JointLoss(recon, kl, excess, dsm, recon + kl + excess, loss_vae, dsm.mean())


def score_posteriors(latents, score_target: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The `posteriors` argument of `denoising_terms` for a `score_target`: the batch's posterior means and variances
    (`LatentTerms`), detached, or None for the noise itself."""
    if score_target not in SCORE_TARGETS:
        raise ValueError(f"unknown score target {score_target!r}; valid: {list(SCORE_TARGETS)}")
    if score_target == "noise":
        return None
    return latents.mean.detach(), latents.variance.detach()


def simple_loss(model, schedule, x0: torch.Tensor, inputs: dict | None = None) -> torch.Tensor:
    """DDPM's L_simple per sample (B,): E_{i,ε}‖ε − ε_θ(x_i, i)‖² summed over dimensions, with i ~ U{1..T} of the
    discrete `schedule`, x_i = √ᾱ_i x_0 + √(1 − ᾱ_i) ε, and the network at t = i/T."""
    steps = torch.randint(1, schedule.T + 1, (x0.shape[0],), device=x0.device)
    noise = torch.randn_like(x0)
    x_t = schedule.q_sample(x0, steps, noise)
    eps = model.guided_eps(x_t, steps.to(x0.dtype) / schedule.T, inputs or {})
    return (noise - eps).flatten(1).pow(2).sum(1)
