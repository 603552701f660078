"""The two latent regularizers of latent-diffusion's first stage: a diagonal-Gaussian posterior (KL-reg) and a
vector quantizer (VQ-reg)."""

from __future__ import annotations

import torch
from torch import nn
from vector_quantize_pytorch import VectorQuantize

LOGVAR_RANGE = (-30.0, 20.0)  # latent-diffusion's clamp of the posterior log-variance


class DiagonalGaussian:
    """The KL-reg posterior q(z|x) = N(mean, diag σ²), σ² = exp(logvar), logvar clamped to [−30, 20].

    Args: mean, logvar: (B, ...) tensors of one shape.
    """

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor):
        self.mean = mean
        self.logvar = logvar.clamp(*LOGVAR_RANGE)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mean + σ·ε, ε ~ N(0, I) drawn from `generator` (reparameterised: differentiable in mean and σ)."""
        noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype, device=self.mean.device)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        """The posterior mean."""
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(N(mean, σ²) ‖ N(0, I)) per image (B,) = ½ Σ (mean² + σ² − 1 − logvar), summed over all non-batch
        dims."""
        elementwise = self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar
        return 0.5 * elementwise.flatten(1).sum(1)


class VectorQuantizer(nn.Module):
    """VQ-reg: each latent vector h (one per pixel, `dim` channels) snaps to its nearest codebook row in L2,
    q = e_k, k = argmin_j ‖h − e_j‖, through `vector_quantize_pytorch.VectorQuantize`.

    What the library does with these settings (read from vector-quantize-pytorch 1.32):
    - `accept_image_fmap=True` takes h as (B, dim, H, W), flattens it to (B, H·W, dim) and returns q in
      (B, dim, H, W) and the indices in (B, H, W) (`channel_last` is then unused).
    - The codebook (`codebook_size` × dim, kaiming-uniform init) is a buffer, not a parameter: in train mode every
      forward updates it by exponential moving averages with `decay` γ of the code counts N_k and of the sums m_k of
      the vectors assigned to each code, e_k = m_k / N_k (N_k Laplace-smoothed). Eval mode leaves it unchanged.
      Under torch.distributed the counts and sums are all-reduced.
    - Dead codes: after that update, in train mode, the codes whose EMA count N_k is below
      `dead_code_threshold` are replaced by vectors of the current batch (drawn with the global torch RNG) and their
      count reset to the threshold. Counts start at 1, so with a threshold above 1 the first batches restart most
      codes from data.
    - Gradient: `rotation_trick=False` (the library's default for dim > 1 is the rotation trick) and
      `straight_through=False` (that flag is the Gumbel-softmax estimator for stochastic code sampling, itself
      off) leave the plain straight-through estimator q = h + sg(q − h), so ∂q/∂h = I. The library applies it in
      train mode only; this wrapper applies it in eval mode too, so gradients reach h in both.
    - Loss: in train mode the library returns `commitment_weight`·mean((h − sg(q))²) (F.mse_loss over all
      elements: β·mean‖h − sg(q)‖², the VQ-VAE commitment term, the codebook term being replaced by the EMA); in
      eval mode it returns 0, so this wrapper computes the same mean there.

    Args: dim: channels of h; codebook_size: number of codes; commitment: β; decay: γ of the EMA;
        dead_code_threshold: EMA count below which a code is restarted (0: never).
    """

    def __init__(self, dim: int, codebook_size: int = 256, commitment: float = 0.25, decay: float = 0.99,
                 dead_code_threshold: float = 2.0):
        super().__init__()
        self.commitment = commitment
        self.codebook_size = codebook_size
        self.quantizer = VectorQuantize(dim, codebook_size, decay=decay, commitment_weight=commitment,
                                        threshold_ema_dead_code=dead_code_threshold, accept_image_fmap=True,
                                        rotation_trick=False, straight_through=False)

    @property
    def codebook(self) -> torch.Tensor:
        """The codes, (codebook_size, dim)."""
        return self.quantizer.codebook

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h (B, dim, H, W) → (q (B, dim, H, W) with ∂q/∂h = I, indices (B, H, W), the commitment loss
        β·mean((h − sg(q))²)); updates the codebook in train mode."""
        quantized, indices, loss = self.quantizer(h)
        quantized = straight_through(h, quantized)
        if not self.training:
            loss = self.commitment * (h - quantized.detach()).pow(2).mean()
        return quantized, indices, loss

    def quantize(self, h: torch.Tensor) -> torch.Tensor:
        """q (B, dim, H, W) of h, with ∂q/∂h = I; never updates the codebook."""
        quantized, _, _ = self.quantizer(h, freeze_codebook=True)
        return straight_through(h, quantized)


def straight_through(h: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """h + sg(q − h): the value of q, the gradient of h (idempotent on the library's train-mode output)."""
    return h + (quantized - h).detach()


def codebook_statistics(indices: torch.Tensor, codebook_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's code perplexity exp(−Σ_k p_k log p_k), p_k the fraction of latent vectors assigned to code k
    (1: one code used, codebook_size: all used equally), and its usage, the fraction of codes used at least once."""
    counts = torch.bincount(indices.flatten(), minlength=codebook_size).float()
    probabilities = counts / counts.sum()
    entropy = -(probabilities * torch.log(probabilities.clamp_min(1e-10))).sum()
    return entropy.exp(), (counts > 0).float().mean()
