"""LSGM: a VAE whose prior over all of its latents is a score-based model (Vahdat et al. 2021).

The score model sees every latent group the decoder uses, in the VAE's prior-standardised coordinates
ε_g = (z_g − μ_p)/σ_p (`nvae.model`), laid on one grid by `NVAE.pack` (the groups concatenated along channels;
finer scales moved onto the top grid by space-to-depth). In ε the VAE's own hierarchical prior is exactly N(0, I),
so the mixed score's base term (`lsgm.models.base`) reproduces the VAE alone and the network learns only what the
VAE's prior misses (LSGM's NVAE likewise hands its SGM the ε of every group). A channel the VAE leaves unused (KL
below 0.1 nat) gets, as LSGM's `drop_inactive_var`, the mixing logit −15 and through the active mask a exactly the
N(0, I) base and no input to the network.

Training phases: "vae" (stage 1: NVAE's own objective, optionally fitting the score model to the detached
latents alongside), then "joint" (LSGM's objective, `lsgm.objective.joint_loss`) or "disjoint" (the VAE frozen,
the score model trained on its latents, LDM-style).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from nvae.train import training_loss
from sde import vlb
from sde.likelihood import ode_log_likelihood

from ..objective import denoising_terms, joint_loss, score_posteriors
from .base import Losses, LossOptions, ScoreModel, known_cells, nats_to_bits_per_dim, ode_options, sample_in_batches

INACTIVE_LOGIT = -15.0  # LSGM's mixing logit of an inactive channel: α ≈ 3e-7, the N(0, I) base alone
INACTIVE_KL = 0.1  # nats: a latent channel whose mean KL stays below this is inactive (LSGM's threshold)
PHASES = ("vae", "joint", "disjoint")


@dataclass
class LatentTerms:
    """One posterior draw as LSGM's bound uses it; per-sample terms are (B,) nats."""

    z: torch.Tensor  # the score model's latents: every group's prior-standardised ε, packed, (B, *latent_shape)
    log_q: torch.Tensor  # log q(ε | x), all groups
    mean: torch.Tensor  # q(ε_g | x, ε_<g) = N(mean, variance) per element, packed like z (the groups above at z's draw)
    variance: torch.Tensor


def vae_stage(vae, x: torch.Tensor, options: LossOptions) -> tuple[dict, torch.Tensor, dict]:
    """NVAE's regularised training loss of a batch: (scalars, loss, the loss's terms)."""
    terms = training_loss(vae, x, options.kl_weight, options.fit, options.regularisers)
    scalars = {"loss_vae": terms["loss"].detach(), "train_bpd": terms["bpd"].detach().mean()}
    return scalars, terms["loss"], terms


class LSGM(ScoreModel):
    """An `nvae.NVAE` + a score model over all of its latents (packed), trained jointly.

    Args: those of `ScoreModel` (its `latent_shape` is the VAE's), and `vae`, the `nvae.NVAE`.
    """

    kind = "lsgm"

    def __init__(self, score_net: nn.Module, sde, vae: nn.Module, data_shape=(1, 8, 8), levels: int | None = 17,
                 mixing_logit_init: float = -3.0, mixed: bool = True, condition: nn.Module | None = None,
                 residual: bool = False):
        super().__init__(score_net, sde, vae.latent_shape, data_shape, levels, mixing_logit_init, mixed, condition,
                         residual)
        self.vae = vae

    # --- training ---------------------------------------------------------------------------------------
    def phase(self, step: int, train) -> str:
        """"vae" for the first `train.stage1_steps` steps, then `train.mode` ("joint" or "disjoint")."""
        return "vae" if step < train.stage1_steps else train.mode

    def losses(self, phase: str, x: torch.Tensor, options: LossOptions) -> Losses:
        """The step's losses in `phase` (module docstring)."""
        if phase == "joint":
            terms = joint_loss(self, x, options.kl_weight, options.scheme_p, options.scheme_q, options.t_eps,
                               options.inputs, options.draws, options.score_target)
            fit, weight = options.fit, options.regularisers
            regulariser = weight * (fit.spectral_weight * self.vae.spectral_norm_loss()
                                    + fit.norm_weight * self.vae.norm_loss()) if weight else 0.0
            scalars = terms.scalars()
            scalars["train_bpd"] = scalars["nelbo"] / (math.log(2) * x[0].numel())
            return Losses(scalars, terms.loss_vae + regulariser, terms.loss_score)
        if phase == "vae":
            scalars, loss_vae, terms = vae_stage(self.vae, x, options)
            if not options.score_in_stage1:
                return Losses(scalars, loss_vae)
            # the score model learns the current VAE's (detached) latents alongside: the joint phase starts with a
            # fitted prior instead of an untrained network
            latents = self.latent_terms(terms["latents"])
        elif phase == "disjoint":
            scalars, loss_vae = {}, None
            with torch.no_grad():
                latents = self.latent_terms(self.vae.encode(x))
        else:
            raise ValueError(f"unknown phase {phase!r} of a latent SGM; valid: {list(PHASES)}")
        loss_score = denoising_terms(self, latents.z.detach(), options.scheme_p, options.t_eps, options.inputs,
                                     posteriors=score_posteriors(latents, options.score_target)).objective().mean()
        return Losses({**scalars, "loss_score": loss_score.detach()}, loss_vae, loss_score)

    def validation_nats(self, x: torch.Tensor, phase: str, t_eps: float, scheme: str | None = None) -> torch.Tensor:
        """One stochastic draw of the bound per image (nats): the VAE's −ELBO in stage 1, LSGM's −ELBO with a DSM
        estimate of the SGM cross-entropy after it (time sampling `scheme`, default `likelihood_scheme`)."""
        if phase == "vae":
            return -self.vae.loss(x)["elbo_nats"]
        return joint_loss(self, x, 1.0, scheme or self.likelihood_scheme, "reweight_p_samples", t_eps).nelbo

    # --- likelihood -------------------------------------------------------------------------------------
    @torch.no_grad()
    def nll(self, x: torch.Tensor, k: int = 1, **ode) -> tuple[torch.Tensor, int]:
        """LSGM's importance-weighted bound per image (nats) with the probability-flow ODE likelihood of the latents
        (Hutchinson trace), and the ODE's function evaluations:
            −log p(x) ≤ −log (1/k) Σ_i p(x|z_i) p_ODE(z_i) / q(z_i|x),  z_i ~ q(z|x)."""
        images = x.repeat(k, *([1] * (x.dim() - 1)))
        out = self.vae(images)
        latents = self.latent_terms(out)
        log_prior, nfe = ode_log_likelihood(self.eps_fn(), self.sde, latents.z, **ode_options(ode))
        log_w = out.dist.log_prob(images) + log_prior - latents.log_q
        return math.log(k) - torch.logsumexp(log_w.view(k, x.shape[0]), 0), nfe

    @torch.no_grad()
    def diffusion_bound(self, x: torch.Tensor, T: int = 1000, num_steps: int | None = None, batch_size: int = 1024,
                        generator: torch.Generator | None = None, on_chunk=None):
        """DDPM's bound on −log p(z_0) of one posterior draw's latents, in −log p(x) ≤ −log p(x|z) + log q(z|x) +
        L(z), term by term. Progressive coding's distortion is measured after decoding x̂ = E p(x | ẑ_0), its rate
        converted to bits per data dimension. Returns the summary (bits/dim) and the rate–distortion table."""
        schedule = self.chain(T)
        out = self.vae(x)
        latents = self.latent_terms(out)
        scale = (self.levels - 1) / 2
        dims = x[0].numel()

        def decoded_error(z_hat, index):
            images = self.decode(z_hat.to(x.dtype), mean=True)
            return ((images - x[index]).double() * scale).pow(2).flatten(1).mean(1)

        bound = vlb.variational_bound(self.discrete_eps_fn(schedule), schedule, latents.z, None, num_steps=num_steps,
                                      batch_size=batch_size, generator=generator, distortion=decoded_error,
                                      on_chunk=on_chunk)
        rest = -out.dist.log_prob(x) + latents.log_q
        total = bound.total + rest
        summary = {"total_bits_per_dim": nats_to_bits_per_dim(total.mean(), dims).item(),
                   "total_bits_per_dim_stderr": nats_to_bits_per_dim(total.std() / math.sqrt(len(total)), dims).item(),
                   "latent_prior_bits_per_dim": nats_to_bits_per_dim(bound.total.mean(), dims).item(),
                   "decoder_entropy_lower_bits_per_dim": nats_to_bits_per_dim(rest.mean(), dims).item()}
        table = bound.rate_distortion()
        latent_to_data = latents.z[0].numel() / dims
        return summary, dataclasses.replace(table, rate=table.rate * latent_to_data, term=table.term * latent_to_data)

    # --- inactive channels ------------------------------------------------------------------------------
    @torch.no_grad()
    def channel_kl(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """The VAE's mean KL per channel of the score model's latents, E_x Σ_{h,w} KL(q(ε|x) ‖ N(0, I)) (C,), over
        images x (the KL of each packed element is that of its latent element: KL is invariant under z ↔ ε)."""
        total = torch.zeros(self.latent_shape[0], device=x.device, dtype=torch.float64)
        for batch in x.split(batch_size):
            kl = self.vae.pack(self.vae.encode(batch).kl_elements)
            total += kl.double().sum((0, 2, 3))
        return (total / x.shape[0]).to(x.dtype)

    def prepare_prior(self, x: torch.Tensor, train) -> dict:
        """When the joint (or disjoint) phase starts after a stage 1: LSGM's drop_inactive_var if
        `train.drop_inactive_var`, the KL per channel averaged over images x."""
        if not (train.get("drop_inactive_var") and train.stage1_steps > 0):
            return {}
        return {"active_channels": int(self.drop_inactive(x).sum())}

    def drop_inactive(self, x: torch.Tensor, threshold: float = INACTIVE_KL) -> torch.Tensor:
        """LSGM's `drop_inactive_var`: channels whose mean KL on images x is below `threshold` nats get the mixing
        logit −15 and no input to the network (`eps`). Call it in eval mode. Returns the active mask (C,) bool."""
        if not self.has_normal_base:
            raise ValueError("drop_inactive needs the mixed or the residual score (score.mixed or score.residual)")
        active = self.channel_kl(x) >= threshold
        with torch.no_grad():
            self.active.copy_(active.to(self.active.dtype))
            if self.mixing_logit is not None:
                self.mixing_logit[~active] = INACTIVE_LOGIT
        return active

    # --- latents <-> data -------------------------------------------------------------------------------
    def latent_terms(self, out) -> LatentTerms:
        """A VAE pass (`nvae.Latents`) as the score model's latents (every group's ε, packed), their log q and their
        posteriors."""
        return LatentTerms(self.vae.pack(out.eps), torch.stack(out.log_q_eps, 1).sum(1), self.vae.pack(out.eps_mean),
                           self.vae.pack(out.eps_std).square())

    def decoder(self, z: torch.Tensor):
        """p(x | z) for the score model's latents z (every group's ε, packed): a deterministic function of z."""
        return self.vae.decode(self.vae.unpack(z), space="eps")

    def decode(self, z: torch.Tensor, mean: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images x ~ p(x | z) (drawn from `generator`), or its mean, of `decoder`."""
        dist = self.decoder(z)
        return dist.mean() if mean else dist.sample(generator)

    def encode(self, x: torch.Tensor, mean: bool = False) -> torch.Tensor:
        """A posterior sample (mean: the chain of posterior means) of the latents as the score model sees them
        (every group's prior-standardised ε, packed)."""
        return self.vae.pack(self.vae.encode(x, mean).eps)

    def known_latents(self, mask: torch.Tensor, threshold: float = 1.0) -> torch.Tensor:
        """Known latent elements (B, *latent_shape) of the packed latents for a pixel mask (1 = known): each group's
        grid laid over the image at its own resolution, a cell known when at least `threshold` of the pixels under
        it are known (in every channel; 1 asks for all of them), then packed like the latents (`NVAE.pack`), so
        that a finer group's cells keep their own, smaller footprints on the top grid."""
        groups = [known_cells(mask, shape, threshold) for shape in self.vae.group_shapes]
        return self.vae.pack(groups)

    def x0_range(self) -> None:
        """Latents are not clipped in reverse steps."""
        return None

    @torch.no_grad()
    def sample(self, n: int, sampler: str = "ode", temperature: float = 1.0, generator: torch.Generator | None = None,
               mean: bool = False, y=None, guidance: float = 1.0, batch_size: int | None = None,
               output_type: str = "tensor", prior: str = "sgm", **options):
        """`ScoreModel.sample` through the score prior (every latent group from the score model), or with
        `prior="vae"` from the VAE's own hierarchical prior (no score-network evaluations: NFE 0)."""
        if prior == "vae":
            def draw(count: int, y_batch):
                return self.to_data_grid(self.vae.sample(count, temperature, mean, generator)), 0

            return sample_in_batches(draw, n, batch_size, None, output_type)
        if prior != "sgm":
            raise ValueError(f"prior must be 'sgm' (the score model) or 'vae' (the VAE's own); got {prior!r}")
        return super().sample(n, sampler, temperature, generator, mean, y, guidance, batch_size, output_type,
                              **options)
