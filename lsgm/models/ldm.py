"""Latent Diffusion (Rombach et al. 2022): a first-stage autoencoder, then a diffusion model on its latents.

Stage 1 (phase "autoencoder", `stage1_steps`) trains an `autoencoder.Autoencoder` (factor f, KL- or VQ-reg) on
    L1 + perceptual, + regularization_weight·(KL or VQ commitment), + the adaptive-weighted hinge generator loss
    after `disc_start`,
and its PatchGAN discriminator on the hinge loss (`autoencoder.AutoencoderLoss`). Stage 2 (phase "score") freezes
the autoencoder and trains the score network on the latents it gives, scaled,
    z = scale_factor · E(x),      L_LDM = E_{t,ε} w(t)‖ε − ε_θ(z_t, t[, τ_θ(y)])‖²  (`train.scheme_p`;
                                  drop_all_uniform is latent-diffusion's unweighted L_simple),
with `scale_factor` fixed by the config or, `scale_by_std` (latent-diffusion's default), set to 1/std(E(x)) over
the training images when stage 2 starts (`prepare_prior`), so the latents enter the diffusion with unit variance.
E(x) is the KL posterior's mean (a sample, as latent-diffusion draws, when `encode(mean=False)`) or the VQ
autoencoder's pre-quantization latents, which its decoder quantizes (latent-diffusion diffuses those too).

Everything downstream of the score model (samplers, guidance, conditioning by concatenation or cross-attention,
RePaint, interpolation, progressive coding) is the `ScoreModel`'s. The decoder is not a likelihood (L1/perceptual/
adversarial training), so the LDM has no NLL: `nll` raises and the trainer reports the reconstruction error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import torch
from torch import nn

from autoencoder import Autoencoder, AutoencoderLoss
from sde import vlb

from ..objective import cross_entropy, denoising_terms
from .base import Losses, LossOptions, ScoreModel, known_cells, nats_to_bits_per_dim

PHASES = ("autoencoder", "score")


class LikelihoodUndefined(ValueError):
    """A model kind whose decoder is not a likelihood has no NLL bound."""


class LDM(ScoreModel):
    """An autoencoder + a score model over its scaled latents (module docstring).

    Args: those of `ScoreModel` (its `latent_shape` is the autoencoder's), and
        autoencoder: the first stage; first_stage_loss: its `AutoencoderLoss` (holding the discriminator, whose
        parameters are the `first_stage_loss.discriminator.*` ones, and the frozen perceptual network);
        scale_factor: a fixed latent scale, or None for `scale_by_std` (set when stage 2 starts).
    """

    kind = "ldm"

    def __init__(self, score_net: nn.Module, sde, autoencoder: Autoencoder, first_stage_loss: AutoencoderLoss,
                 data_shape, levels: int | None = 17, scale_factor: float | None = None,
                 condition: nn.Module | None = None, mixing_logit_init: float = -3.0, mixed: bool = False,
                 residual: bool = False):
        super().__init__(score_net, sde, autoencoder.latent_shape, data_shape, levels, mixing_logit_init, mixed,
                         condition, residual)
        self.autoencoder, self.first_stage_loss = autoencoder, first_stage_loss
        self.scale_by_std = scale_factor is None
        self.register_buffer("scale_factor", torch.tensor(1.0 if scale_factor is None else float(scale_factor)))

    # --- training ---------------------------------------------------------------------------------------
    def phase(self, step: int, train) -> str:
        """The autoencoder for `train.stage1_steps`, then the score model on its frozen latents."""
        return "autoencoder" if step < train.stage1_steps else "score"

    def losses(self, phase: str, x: torch.Tensor, options: LossOptions) -> Losses:
        if phase == "autoencoder":
            return self.autoencoder_losses(x, options.step)
        if phase != "score":
            raise ValueError(f"an LDM trains in phases {PHASES}, not {phase!r}")
        loss = denoising_terms(self, self.encode(x), options.scheme_p, options.t_eps, options.inputs).objective()
        loss = loss.mean()
        return Losses({"loss_score": loss.detach()}, None, loss)

    def autoencoder_losses(self, x: torch.Tensor, step: int) -> Losses:
        """The first stage's generator loss (over the autoencoder) and the discriminator's hinge loss (None before
        `disc_start`), from one forward pass."""
        out = self.autoencoder(x)
        loss, scalars = self.first_stage_loss.generator(x, out, step, self.autoencoder.last_layer,
                                                        self.autoencoder.logvar)
        loss_disc, disc_scalars = self.first_stage_loss.discriminator_loss(x, out.reconstruction, step)
        scalars = {**scalars, **out.scalars, **disc_scalars, "loss_vae": loss.detach()}
        # the adaptive-weighted hinge term swings the generator's loss through 0, and the discriminator's hinge loss
        # is bounded: the spike guard tracks the reconstruction term alone
        return Losses(scalars, loss, None, loss_disc, spike_values={"vae": scalars["nll"], "disc": None})

    @torch.no_grad()
    def prepare_prior(self, x: torch.Tensor, train) -> dict:
        """When stage 2 starts: `scale_by_std` sets scale_factor = 1/std of the latents E(x) of images x
        (latent-diffusion takes its first batch's; the caller passes the first training images). Call in eval
        mode."""
        if not self.scale_by_std:
            return {"scale_factor": self.scale_factor.item()}
        latents = torch.cat([self.autoencoder.latents(batch) for batch in x.split(512)])
        self.scale_factor.copy_(1.0 / latents.double().std())
        return {"scale_factor": self.scale_factor.item()}

    def validation_nats(self, x: torch.Tensor, phase: str, t_eps: float, scheme: str | None = None) -> torch.Tensor:
        """Per image: the first stage's reconstruction loss Σ (|x − x̂| + w·perceptual) in stage 1 (a loss, not a
        bound: logged only, the best checkpoint is chosen in stage 2); in stage 2 one DSM draw of the
        cross-entropy of the scaled latents under the score model (time sampling `scheme`, default
        `likelihood_scheme`), a bound on −log p(z) of the continuous latents."""
        if phase == "autoencoder":
            per_element = self.first_stage_loss.reconstruction(x, self.autoencoder(x).reconstruction)
            return per_element.flatten(1).sum(1)
        z = self.encode(x)
        terms = denoising_terms(self, z, scheme or self.likelihood_scheme, t_eps)
        return cross_entropy(self, terms, z, t_eps)

    has_likelihood = False

    def nll(self, x: torch.Tensor, k: int = 1, **ode) -> tuple[torch.Tensor, int]:
        raise LikelihoodUndefined("an LDM's decoder is trained on L1/perceptual/adversarial losses, not a likelihood: "
                                  "it has no NLL bound (use its reconstruction error, `reconstruction_error`)")

    @torch.no_grad()
    def reconstruction_error(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image RMSE (B,) in [−1, 1] units of x against its reconstruction D(E(x)) (the posterior mean; VQ:
        quantized), the reconstruction on the data's grid."""
        images = self.to_data_grid(self.decode(self.encode(x, mean=True), mean=True))
        return (images - x).flatten(1).pow(2).mean(1).sqrt()

    # --- latents <-> data -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def frozen_autoencoder(self):
        """The autoencoder in eval mode for the block (a VQ codebook must not move), its mode restored after."""
        training = self.autoencoder.training
        self.autoencoder.eval()
        try:
            yield
        finally:
            self.autoencoder.train(training)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, mean: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = scale_factor · E(x): the KL posterior's mean (mean=True) or a sample from `generator`, or the VQ
        pre-quantization latents, computed with the autoencoder in eval mode (its weights are frozen in stage 2 and
        a VQ codebook must not move)."""
        with self.frozen_autoencoder():
            return self.scale_factor * self.autoencoder.latents(x, sample=not mean, generator=generator)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, mean: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images D(z / scale_factor) (VQ: quantized first); the decoder is deterministic (`mean`, `generator`
        unused)."""
        with self.frozen_autoencoder():
            return self.autoencoder.decode(z / self.scale_factor)

    def known_latents(self, mask: torch.Tensor, threshold: float = 1.0) -> torch.Tensor:
        """A latent cell is known when at least `threshold` of the pixels under it (f × f) are, in every channel."""
        return known_cells(mask, self.latent_shape, threshold)

    def x0_range(self) -> None:
        """Latents are not clipped in reverse steps."""
        return None

    @torch.no_grad()
    def diffusion_bound(self, x: torch.Tensor, T: int = 1000, num_steps: int | None = None, batch_size: int = 1024,
                        generator: torch.Generator | None = None, on_chunk=None):
        """DDPM's bound on −log p(z_0) of the scaled latents, term by term (per data dimension: the latents are
        continuous, so it is not a bound on −log P(x)); progressive coding's distortion is the RMSE in levels of the
        decoded prediction x̂ = D(ẑ_0) against x. Returns the summary (bits/dim) and the rate–distortion table."""
        schedule = self.chain(T)
        z = self.encode(x, mean=True)
        scale = (self.levels - 1) / 2 if self.levels is not None else 1.0
        dims = x[0].numel()

        def decoded_error(z_hat, index):
            images = self.decode(z_hat.to(x.dtype))
            return ((images - x[index]).double() * scale).pow(2).flatten(1).mean(1)

        bound = vlb.variational_bound(self.discrete_eps_fn(schedule), schedule, z, None, num_steps=num_steps,
                                      batch_size=batch_size, generator=generator, distortion=decoded_error,
                                      on_chunk=on_chunk)
        summary = {"latent_prior_bits_per_dim": nats_to_bits_per_dim(bound.total.mean(), dims).item(),
                   "latent_prior_bits_per_dim_stderr":
                       nats_to_bits_per_dim(bound.total.std() / math.sqrt(len(bound.total)), dims).item()}
        table = bound.rate_distortion()
        latent_to_data = z[0].numel() / dims
        return summary, dataclasses.replace(table, rate=table.rate * latent_to_data, term=table.term * latent_to_data)
