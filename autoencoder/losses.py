"""Latent-diffusion's first-stage losses: L1 + perceptual reconstruction with an optional learned log-variance, the
weighted regularization, and a PatchGAN's hinge loss with the adaptive weight of VQGAN (Esser et al. 2021)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .model import AutoencoderOutput


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """L_D = ½ (mean relu(1 − D(x)) + mean relu(1 + D(x̂)))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """L_G = −mean D(x̂)."""
    return -logits_fake.mean()


def adaptive_weight(reconstruction_loss: torch.Tensor, generator_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4, eps: float = 1e-4) -> torch.Tensor:
    """λ = clamp(‖∇_w L_rec‖ / (‖∇_w L_G‖ + eps), 0, max_weight), detached, w the decoder's last layer: balances
    the GAN gradient against the reconstruction gradient where they meet (keeps both graphs for the backward)."""
    reconstruction_grad, = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)
    generator_grad, = torch.autograd.grad(generator_loss, last_layer, retain_graph=True)
    weight = reconstruction_grad.norm() / (generator_grad.norm() + eps)
    return weight.clamp(0.0, max_weight).detach()


class AutoencoderLoss(nn.Module):
    """The first stage's objectives (latent-diffusion's LPIPSWithDiscriminator).

    Generator (autoencoder): rec = |x − x̂| + perceptual_weight·P(x, x̂) per element (P per image, broadcast);
    nll = rec / exp(logvar) + logvar; L_nll = Σ nll / B; loss = L_nll + regularization_weight·R
    + λ·disc_weight·f(step)·L_G, λ = `adaptive_weight`(L_nll, L_G), f(step) = disc_factor from `disc_start` on, else
    0. Discriminator: f(step)·`hinge_discriminator_loss`.

    Args: discriminator: the PatchGAN (None: no adversarial term); perceptual: P, (x, y) → (B,) (None: L1 only);
        perceptual_weight, regularization_weight: their weights; disc_start: first step of the GAN terms;
        disc_weight: multiplies λ; disc_factor: f(step) from disc_start on.
    """

    def __init__(self, discriminator: nn.Module | None, perceptual: nn.Module | None = None,
                 perceptual_weight: float = 1.0, regularization_weight: float = 1e-6, disc_start: int = 0,
                 disc_weight: float = 0.5, disc_factor: float = 1.0):
        super().__init__()
        self.discriminator = discriminator
        self.perceptual = perceptual
        self.perceptual_weight = perceptual_weight
        self.regularization_weight = regularization_weight
        self.disc_start = disc_start
        self.disc_weight = disc_weight
        self.disc_factor = disc_factor

    def adversarial(self, step: int) -> bool:
        """Whether the GAN terms are on: a discriminator, step ≥ disc_start and gradients enabled (not in
        validation)."""
        return self.discriminator is not None and step >= self.disc_start and torch.is_grad_enabled()

    def reconstruction(self, x: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """rec = |x − x̂| + perceptual_weight·P(x, x̂), per element (B, C, H, W)."""
        return self.reconstruction_terms(x, reconstruction)[0]

    def reconstruction_terms(self, x: torch.Tensor, reconstruction: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """rec (B, C, H, W), its L1 part |x − x̂| (B, C, H, W) and P(x, x̂) (B,) (None without a perceptual loss)."""
        l1 = (x - reconstruction).abs()
        if self.perceptual is None:
            return l1, l1, None
        perceptual = self.perceptual(x, reconstruction)
        return l1 + self.perceptual_weight * perceptual.view(-1, 1, 1, 1), l1, perceptual

    def generator(self, x: torch.Tensor, out: AutoencoderOutput, step: int, last_layer: torch.Tensor,
                  logvar: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The autoencoder's loss (class docstring) and detached scalars; before disc_start, without a
        discriminator or without gradients the discriminator is not called ("g_loss", "disc_weight" are then 0)."""
        rec, l1, perceptual = self.reconstruction_terms(x, out.reconstruction)
        nll = rec / logvar.exp() + logvar if logvar is not None else rec
        nll_loss = nll.sum() / x.shape[0]
        loss = nll_loss + self.regularization_weight * out.regularization
        g_loss = disc_weight = torch.zeros((), device=x.device)
        if self.adversarial(step):
            g_loss = hinge_generator_loss(self.discriminator(out.reconstruction))
            disc_weight = adaptive_weight(nll_loss, g_loss, last_layer) * self.disc_weight
            loss = loss + disc_weight * self.disc_factor * g_loss
        scalars = {"loss": loss, "rec_l1": l1.mean(), "nll": nll_loss, "regularization": out.regularization,
                   "g_loss": g_loss, "disc_weight": disc_weight}
        if perceptual is not None:
            scalars["perceptual"] = perceptual.mean()
        if logvar is not None:
            scalars["logvar"] = logvar
        return loss, {name: value.detach() for name, value in scalars.items()}

    def discriminator_loss(self, x: torch.Tensor, reconstruction: torch.Tensor,
                           step: int) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """f(step)·½(mean relu(1 − D(x)) + mean relu(1 + D(sg(x̂)))) and detached scalars; (None, {}) before
        disc_start or without a discriminator."""
        if self.discriminator is None or step < self.disc_start:
            return None, {}
        logits_real = self.discriminator(x.detach())
        logits_fake = self.discriminator(reconstruction.detach())
        d_loss = self.disc_factor * hinge_discriminator_loss(logits_real, logits_fake)
        return d_loss, {"d_loss": d_loss.detach(), "logits_real": logits_real.mean().detach(),
                        "logits_fake": logits_fake.mean().detach()}
