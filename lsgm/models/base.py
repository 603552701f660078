"""What every model kind shares: the training-step options and losses, and the score model over a tensor space.

`ScoreModel` is a score network + an SDE over tensors of `latent_shape` (the latents of a latent model, the
images of a pixel model), with LSGM's mixed score
    ε̂(z_t, t) = (1 − α)·σ_t·z_t + α·ε'_θ(a ⊙ z_t, t),   α = a·sigmoid(ℓ), ℓ a learnable logit per channel,
whose first term is the exact ε of a N(0, I) prior under the VP-SDE (its marginal is N(0, I) at every t), so the
network only learns the correction; a ∈ {0, 1} per channel marks the active channels (all, unless a latent model
drops some, see `lsgm.models.latent`). `mixed=False` uses ε'_θ alone. `residual=True` keeps the base whole and
makes the network the correction itself,
    ε̂(z_t, t) = σ_t·z_t + a ⊙ ε'_θ(a ⊙ z_t, t),
which the zero-initialised output layer of `lsgm.score_net` starts at exactly the N(0, I) prior; the network's
gradient is not scaled down by α (with the mixed score at α ≈ 0.05 it is, and ε'_θ must first learn σ_t z_t
itself before the mix beats the base). The kinds subclass it and add what turns
its space into data: `encode`/`decode`, the losses, the likelihood.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sde import expand_like, sampling
from sde.weighting import supported_schemes

from ..data import to_levels, to_unit_range

ODE_DEFAULTS = {"rtol": 1e-5, "atol": 1e-5, "t_eps": 1e-5, "divergence": "hutchinson", "probe": "rademacher"}


def ode_options(options: dict) -> dict:
    """The probability-flow ODE likelihood's options: `ODE_DEFAULTS` updated by `options`."""
    return {**ODE_DEFAULTS, **options}


def nats_to_bits_per_dim(nats: torch.Tensor, dims: int) -> torch.Tensor:
    return nats / (dims * math.log(2))


def data_grid(x: torch.Tensor, levels: int | None) -> torch.Tensor:
    """x rounded to the nearest of the data's `levels` values in [−1, 1] (continuous data: unchanged)."""
    if levels is None:
        return x
    return to_unit_range(to_levels(x, levels), levels).to(x.dtype)


def known_cells(mask: torch.Tensor, shape, threshold: float = 1.0) -> torch.Tensor:
    """Known cells (B, C, h, w) of a grid of `shape` (C, h, w) laid over the image for a pixel mask (B, C', H, W)
    (1 = known): a cell is known when at least `threshold` of the pixels under it are known in every channel."""
    channels, height, width = shape
    fraction = F.adaptive_avg_pool2d(mask.amin(dim=1, keepdim=True), (height, width))
    return (fraction >= threshold - 1e-6).to(mask.dtype).expand(-1, channels, -1, -1)


OUTPUT_TYPES = ("tensor", "unit", "numpy", "pil")


def as_output(images: torch.Tensor, output_type: str = "tensor"):
    """Images (B, C, H, W) in [−1, 1] as `output_type`: "tensor" as they are, "unit" in [0, 1], "numpy" uint8
    (B, H, W, C) in 0..255, "pil" a list of PIL images (mode L or RGB)."""
    if output_type == "tensor":
        return images
    if output_type == "unit":
        return (images + 1) / 2
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"unknown output_type {output_type!r}; valid: {', '.join(OUTPUT_TYPES)}")
    pixels = to_levels(images.detach().float().cpu(), 256).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    if output_type == "numpy":
        return pixels
    from PIL import Image

    return [Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p) for p in pixels]


def condition_slice(y, start: int, stop: int):
    """Rows start:stop of a condition: labels (N,), or (images, mask) with a mask of one row or of N."""
    if y is None or torch.is_tensor(y):
        return None if y is None else y[start:stop]
    images, mask = y
    mask = torch.as_tensor(mask)
    return images[start:stop], mask if mask.shape[0] == 1 else mask[start:stop]


def sample_in_batches(draw, n: int, batch_size: int | None, y=None, output_type: str = "tensor"):
    """(images, NFE) of `draw(count, y_batch) -> (images, nfe)` over batches of `batch_size` (None: one batch), as
    `output_type`; the NFE is the largest batch's (adaptive solvers differ between batches)."""
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"the number of samples must be a positive integer, got {n!r}")
    size = batch_size or n
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"unknown output_type {output_type!r}; valid: {', '.join(OUTPUT_TYPES)}")
    images, nfe = [], 0
    for start in range(0, n, size):
        stop = min(start + size, n)
        batch, calls = draw(stop - start, condition_slice(y, start, stop))
        images.append(batch)
        nfe = max(nfe, calls)
    return as_output(torch.cat(images), output_type), nfe


@dataclass
class LossOptions:
    """What one training step passes to `model.losses` besides the batch."""

    kl_weight: float = 1.0  # NVAE's KL warm-up weight
    scheme_p: str = "ll_iw"  # the score model's time weighting (sde.SCHEMES)
    scheme_q: str = "reweight_p_samples"  # the VAE's cross-entropy draw: the score model's, reweighted, or its own
    t_eps: float = 1e-2  # the smallest diffusion time
    draws: int = 1  # (t, ε) draws per latent in the joint DSM terms
    score_target: str = "noise"  # the score model's target (lsgm.objective.SCORE_TARGETS)
    inputs: dict = field(default_factory=dict)  # the score network's condition (dropped for guidance), or {}
    fit: object = None  # nvae.train.FitConfig: the VAE's balancing and regulariser weights
    score_in_stage1: bool = False  # stage 1 also fits the score model to the VAE's detached latents
    step: int = 0  # the training step (an LDM's discriminator starts at `disc_start`)
    regularisers: float = 1.0  # the weight of the first stage's per-step weight regularisers in this batch's loss
    # (nvae.train.training_loss): A micro-batches of one step weigh them A, 0, 0, ... so that they count once


@dataclass
class Losses:
    """One step's losses: scalars to log (0-d tensors), and the scalars minimised over the first stage's parameters
    (the VAE's or the autoencoder's), the score model's and a discriminator's (None: that part does not learn in
    this phase)."""

    scalars: dict
    loss_vae: torch.Tensor | None = None
    loss_score: torch.Tensor | None = None
    loss_disc: torch.Tensor | None = None
    # the value the trainer's loss-spike guard tracks for a part ("vae", "disc", "score"), when not its loss; None:
    # no spike check (a finite adversarial loss has no scale to spike against)
    spike_values: dict = field(default_factory=dict)


class ScoreModel(nn.Module):
    """A score network over tensors of `latent_shape` with an SDE and the mixed score (module docstring).

    Args:
        score_net: ε'_θ(z_t, t, cond=None, context=None).
        sde: the SDE of the prior (the mixed score needs the VP-SDE: its base is N(0, I) at every t).
        latent_shape: the shape of one tensor the score model sees.
        data_shape: (C, H, W) of the data; levels: values per pixel of the data (None: continuous).
        mixing_logit_init: the initial ℓ (LSGM: −3; −6 for MNIST); `mixed=False` uses ε'_θ alone.
        residual: the residual score σ_t z_t + a ⊙ ε'_θ instead of the mixed one (module docstring).
        condition: a `lsgm.conditioning` module (class labels by cross-attention, a masked image by concatenation).
    """

    kind = "score"
    has_likelihood = True  # `nll` gives a bound on −log P(x)
    sample_steps = 1000  # the length of the discrete chain the ddpm/ddim samplers run on

    def __init__(self, score_net: nn.Module, sde, latent_shape, data_shape, levels: int | None = None,
                 mixing_logit_init: float = -3.0, mixed: bool = True, condition: nn.Module | None = None,
                 residual: bool = False):
        super().__init__()
        self.score_net, self.sde, self.condition, self.residual = score_net, sde, condition, residual
        self.latent_shape, self.data_shape, self.levels = tuple(latent_shape), tuple(data_shape), levels
        channels = self.latent_shape[0]
        mixing = mixed and not residual
        self.mixing_logit = nn.Parameter(torch.full((channels,), float(mixing_logit_init))) if mixing else None
        self.register_buffer("active", torch.ones(channels))  # 0 for channels dropped by `drop_inactive`

    # --- the mixed score ------------------------------------------------------------------------------
    def mixing_coefficient(self) -> torch.Tensor | None:
        """α = a·sigmoid(ℓ) per channel (a: the active mask), or None without mixing."""
        return None if self.mixing_logit is None else self.active * torch.sigmoid(self.mixing_logit)

    @property
    def likelihood_scheme(self) -> str:
        """The time sampling of likelihood-weighted estimates: importance-sampled where the SDE supports it (VP),
        uniform otherwise."""
        return "ll_iw" if "ll_iw" in supported_schemes(self.sde) else "ll_uniform"

    @property
    def has_normal_base(self) -> bool:
        """Whether ε̂ contains the N(0, I) prior's exact ε σ_t z_t as a base (mixed or residual score)."""
        return self.residual or self.mixing_logit is not None

    def channel_view(self, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Per-channel values (C,) shaped to broadcast against `like` (B, C, ...) in its dtype."""
        return values.to(like.dtype).reshape(1, -1, *([1] * (like.dim() - 2)))

    def eps(self, z_t: torch.Tensor, t: torch.Tensor, cond=None, context=None) -> torch.Tensor:
        """ε̂(z_t, t) = (1 − α)σ_t z_t + α ε'_θ(a ⊙ z_t, t) (or ε'_θ alone), t continuous in [0, 1] of shape (B,)."""
        active = self.channel_view(self.active, z_t)
        eps_net = self.score_net(z_t * active, t, cond, context)
        if not self.has_normal_base:
            return eps_net
        std = expand_like(self.sde.marginal(t)[1], z_t)
        if self.residual:
            return std * z_t + active * eps_net
        alpha = self.channel_view(self.mixing_coefficient(), z_t)
        return (1 - alpha) * std * z_t + alpha * eps_net

    # --- conditioning and guidance --------------------------------------------------------------------
    def condition_inputs(self, y) -> dict:
        """The score network's keyword inputs (`cond`/`context`) for a condition y ({} for none)."""
        if y is None:
            return {}
        if self.condition is None:
            raise ValueError("this model was trained without a condition; train with condition=... to use one")
        return self.condition.inputs(y)

    def guided_eps(self, z_t: torch.Tensor, t: torch.Tensor, inputs: dict, guidance: float = 1.0) -> torch.Tensor:
        """Classifier-free guidance ε̂(z, t, ∅) + w·(ε̂(z, t, y) − ε̂(z, t, ∅)), the two in one batched call.

        A conditional model with no condition given (`inputs` empty) is the unconditional model ε̂(z, t, ∅).
        """
        if self.condition is None:
            return self.eps(z_t, t)
        null = self.condition.null_inputs(z_t.shape[0], z_t)
        if not inputs or guidance == 0.0:
            return self.eps(z_t, t, **null)
        if guidance == 1.0:
            return self.eps(z_t, t, **inputs)
        merged = {name: torch.cat([inputs[name], null[name]]) for name in inputs}
        eps_conditional, eps_null = self.eps(torch.cat([z_t, z_t]), torch.cat([t, t]), **merged).chunk(2)
        return eps_null + guidance * (eps_conditional - eps_null)

    def eps_fn(self, y=None, guidance: float = 1.0):
        """The model as a sampler's continuous-time `eps_fn(x, t)` (a discrete chain's network sees t = i/T),
        conditioned on y with guidance scale `guidance` when the model has a condition."""
        inputs = self.condition_inputs(y)
        return lambda x, t: self.guided_eps(x, t, inputs, guidance)

    # --- the space the score model sees <-> data ------------------------------------------------------
    def encode(self, x: torch.Tensor, mean: bool = False) -> torch.Tensor:
        """Data to the score model's space (identity here; a latent model's posterior sample or mean)."""
        return x

    def decode(self, z: torch.Tensor, mean: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """The score model's space to data: here the tensor itself, clamped to [−1, 1] for discrete data."""
        return z if self.levels is None else z.clamp(-1, 1)

    def known_latents(self, mask: torch.Tensor, threshold: float = 1.0) -> torch.Tensor:
        """The elements of the score model's space known when the pixels where `mask` = 1 are (inpainting): here
        the mask itself."""
        return mask

    def x0_range(self) -> tuple[float, float] | None:
        """The range x̂_0 is clipped to in each reverse step (DDPM's and RePaint's `clip_denoised`): (−1, 1) for
        discrete data in pixel space, None otherwise."""
        return (-1.0, 1.0) if self.levels is not None else None

    def chain(self, T: int = 1000):
        """The model's discrete chain: its SDE discretised to T steps (the network sees step i as t = i/T)."""
        return self.sde.discretize(T)

    def discrete_eps_fn(self, schedule):
        """The network as a discrete eps_fn(x, i) on `schedule`'s steps (step i is t = i/T)."""
        return sampling.discrete_eps_fn(self.eps_fn(), schedule.T)

    def to_data_grid(self, x: torch.Tensor) -> torch.Tensor:
        return data_grid(x, self.levels)

    def prepare_prior(self, x: torch.Tensor, train) -> dict:
        """Called in eval mode when the score model's phase starts, with the first training images x; returns
        numbers to log. Nothing to do here (an LSGM drops inactive channels, an LDM sets its latent scale)."""
        return {}

    def monitored(self) -> dict:
        """Numbers the trainer logs beside the losses: the mean mixing coefficient of a mixed score."""
        alpha = self.mixing_coefficient()
        return {} if alpha is None else {"mixing_alpha": alpha.detach().mean()}

    @torch.no_grad()
    def sample(self, n: int, sampler: str = "ode", temperature: float = 1.0, generator: torch.Generator | None = None,
               mean: bool = False, y=None, guidance: float = 1.0, batch_size: int | None = None,
               output_type: str = "tensor", **options):
        """n samples on the data's grid and the sampler's NFE (of the largest batch).

        z_1 ~ N(0, temperature²·I) of the score model's shape, integrated to t ≈ 0 by `sampler` (any name of
        `sde.sampling.SAMPLERS`, with its options, e.g. steps=20; ddpm/ddim run on the model's chain of
        `sample_steps`), then decoded (`decode`, its mean with `mean=True`). `y` conditions a conditional model
        (class labels (n,), or (images, mask) for a mask condition) with guidance `guidance`. Every random draw
        (z_1, the sampler's noise, the decoder's) comes from `generator`, so a seeded generator alone reproduces
        the samples bit for bit at a given `batch_size` (None: one batch). `output_type`: "tensor" in [−1, 1],
        "unit" in [0, 1], "numpy" uint8 (n, H, W, C), "pil" a list of images.
        """
        reference = next(self.parameters())

        def draw(count: int, y_batch):
            z_T = temperature * self.sde.prior_sample((count, *self.latent_shape), generator=generator,
                                                      device=reference.device, dtype=reference.dtype)
            z, nfe = sampling.sample(self.eps_fn(y_batch, guidance), self.sde, z_T, sampler, T=self.sample_steps,
                                     generator=generator, **options)
            return self.to_data_grid(self.decode(z, mean, generator)), nfe

        return sample_in_batches(draw, n, batch_size, y, output_type)
