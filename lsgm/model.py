"""LSGM: a VAE whose prior over all of its latents is a score-based model (Vahdat et al. 2021).

The score model sees every latent group the decoder uses, in the VAE's prior-standardised coordinates
ε_g = (z_g − μ_p)/σ_p (`nvae.model`), laid on one grid by `NVAE.pack` (the groups concatenated along channels;
finer scales moved onto the top grid by space-to-depth). In ε the VAE's own hierarchical prior is exactly N(0, I),
so the mixed score's base term below reproduces the VAE alone and the network learns only what the VAE's prior
misses (LSGM's NVAE likewise hands its SGM the ε of every group).

The score model predicts ε with LSGM's mixed parameterisation
    ε̂(z_t, t) = (1 − α)·σ_t·z_t + α·ε'_θ(a ⊙ z_t, t),   α = a·sigmoid(ℓ), ℓ a learnable logit per channel,
whose first term is the exact ε of a N(0, I) prior (its VP marginal is N(0, I) at every t), so the
network only learns the correction. a ∈ {0, 1} per channel marks the active latent channels (LSGM's
`drop_inactive_var`): a channel the VAE leaves unused (KL below 0.1 nat) gets ℓ = −15 as in LSGM, and through a
exactly the N(0, I) base and no input to the network. `vae=None` gives a pixel-space score model (the latent is the
image); `discrete_steps=T` makes the model DDPM's discrete chain (t = i/T for the network).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sde import VPSDE, expand_like, sampling

from .data import to_levels, to_unit_range

INACTIVE_LOGIT = -15.0  # LSGM's mixing logit of an inactive channel: α ≈ 3e-7, the N(0, I) base alone
INACTIVE_KL = 0.1  # nats: a latent channel whose mean KL stays below this is inactive (LSGM's threshold)


@dataclass
class LatentTerms:
    """One posterior draw as LSGM's bound uses it; per-sample terms are (B,) nats."""

    z: torch.Tensor  # the score model's latents: every group's prior-standardised ε, packed, (B, *latent_shape)
    log_q: torch.Tensor  # log q(ε | x), all groups


class LSGM(nn.Module):
    """VAE (or none) + score network + VP-SDE, with the mixed score.

    Args:
        score_net: ε'_θ(z_t, t, cond=None, context=None) over tensors of `latent_shape`.
        sde: the VP-SDE of the prior.
        vae: an `nvae.NVAE` (all of its latent groups are modelled by the SGM) or None for pixel space.
        data_shape: (C, H, W) of the data; levels: values per pixel of the data.
        mixing_logit_init: initial ℓ (LSGM: −3; −6 for MNIST); `mixed=False` uses ε'_θ alone.
        discrete_steps: T for a DDPM chain (`sde.discretize(T)`), None for continuous time.
        prior: "sgm" (LSGM), or "vae" for a VAE trained alone (sampling and likelihood use its own prior).
        condition: a `lsgm.conditioning` module (class labels by cross-attention, a masked image by concatenation).
    """

    def __init__(
        self,
        score_net: nn.Module,
        sde: VPSDE,
        vae: nn.Module | None = None,
        data_shape=(1, 8, 8),
        levels: int | None = 17,
        mixing_logit_init: float = -3.0,
        mixed: bool = True,
        discrete_steps: int | None = None,
        prior: str = "sgm",
        condition: nn.Module | None = None,
    ):
        super().__init__()
        if prior not in ("sgm", "vae") or (prior == "vae" and vae is None):
            raise ValueError(f"prior must be 'sgm', or 'vae' for a model with a VAE; got {prior!r}")
        self.prior = prior
        if discrete_steps is not None and mixed:
            raise ValueError("the mixed score is defined for continuous time; set mixed=False for a discrete chain")
        self.score_net, self.sde, self.vae = score_net, sde, vae
        self.data_shape, self.levels = tuple(data_shape), levels
        self.latent_shape = tuple(vae.latent_shape) if vae is not None else self.data_shape
        channels = self.latent_shape[0]
        self.mixing_logit = nn.Parameter(torch.full((channels,), float(mixing_logit_init))) if mixed else None
        self.register_buffer("active", torch.ones(channels))  # 0 for channels dropped by `drop_inactive`
        self.schedule = sde.discretize(discrete_steps) if discrete_steps is not None else None
        self.condition = condition

    @property
    def discrete(self) -> bool:
        return self.schedule is not None

    def mixing_coefficient(self) -> torch.Tensor | None:
        """α = a·sigmoid(ℓ) per channel (a: the active mask), or None without mixing."""
        return None if self.mixing_logit is None else self.active * torch.sigmoid(self.mixing_logit)

    def channel_view(self, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Per-channel values (C,) shaped to broadcast against `like` (B, C, ...) in its dtype."""
        return values.to(like.dtype).reshape(1, -1, *([1] * (like.dim() - 2)))

    def eps(self, z_t: torch.Tensor, t: torch.Tensor, cond=None, context=None) -> torch.Tensor:
        """ε̂(z_t, t) = (1 − α)σ_t z_t + α ε'_θ(a ⊙ z_t, t) (or ε'_θ alone), t continuous in [0, 1] of shape (B,)."""
        eps_net = self.score_net(z_t * self.channel_view(self.active, z_t), t, cond, context)
        if self.mixing_logit is None:
            return eps_net
        alpha = self.channel_view(self.mixing_coefficient(), z_t)
        std = expand_like(self.sde.marginal(t)[1], z_t)
        return (1 - alpha) * std * z_t + alpha * eps_net

    @torch.no_grad()
    def channel_kl(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """The VAE's mean KL per channel of the score model's latents, E_x Σ_{h,w} KL(q(ε|x) ‖ N(0, I)) (C,), over
        images x (the KL of each packed element is that of its latent element: KL is invariant under z ↔ ε)."""
        total = torch.zeros(self.latent_shape[0], device=x.device, dtype=torch.float64)
        for batch in x.split(batch_size):
            kl = self.vae.pack(self.vae.encode(batch).kl_elements)
            total += kl.double().sum((0, 2, 3))
        return (total / x.shape[0]).to(x.dtype)

    def drop_inactive(self, x: torch.Tensor, threshold: float = INACTIVE_KL) -> torch.Tensor:
        """LSGM's `drop_inactive_var`: channels whose mean KL on images x is below `threshold` nats get the mixing
        logit −15 and no input to the network (`eps`). Call it in eval mode. Returns the active mask (C,) bool."""
        if self.vae is None or self.mixing_logit is None:
            raise ValueError("drop_inactive needs a latent model with the mixed score (score.mixed=true)")
        active = self.channel_kl(x) >= threshold
        with torch.no_grad():
            self.active.copy_(active.to(self.active.dtype))
            self.mixing_logit[~active] = INACTIVE_LOGIT
        return active

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

    @torch.no_grad()
    def sample(self, n: int, sampler: str = "ode", temperature: float = 1.0, generator: torch.Generator | None = None,
               mean: bool = False, y=None, guidance: float = 1.0, prior: str | None = None,
               **options) -> tuple[torch.Tensor, int]:
        """n samples in the data range and the sampler's NFE.

        z_1 ~ N(0, temperature²·I) of the latent shape, integrated to t ≈ 0 by `sampler` (any name of
        `sde.sampling.SAMPLERS`, with its options; ddpm/ddim run on the model's chain, T = 1000 for a
        continuous model), then decoded (every latent group comes from the score model) and put on
        the data's grid of `levels` values in [−1, 1]. With `prior="vae"` (default: the model's own `prior`)
        the VAE samples from its own prior instead (no network evaluations of the score model). `y` conditions
        a conditional model (class labels (n,), or (images, mask) for a mask condition) with guidance `guidance`.
        """
        if (prior or self.prior) == "vae":
            return self.to_data_grid(self.vae.sample(n, temperature, mean)), 0
        reference = next(self.parameters())
        z_T = temperature * self.sde.prior_sample((n, *self.latent_shape), generator=generator,
                                                  device=reference.device, dtype=reference.dtype)
        steps = self.schedule.T if self.discrete else 1000
        z, nfe = sampling.sample(self.eps_fn(y, guidance), self.sde, z_T, sampler, T=steps, **options)
        return self.to_data_grid(self.decode(z, mean)), nfe

    def to_data_grid(self, x: torch.Tensor) -> torch.Tensor:
        """x rounded to the nearest of the data's `levels` values in [−1, 1] (continuous data: unchanged)."""
        if self.levels is None:
            return x
        return to_unit_range(to_levels(x, self.levels), self.levels).to(x.dtype)

    # --- latent <-> data ------------------------------------------------------------------------
    def chain(self, T: int = 1000):
        """The model's discrete chain: its own DDPM schedule, or its VP-SDE discretised to T steps (the network
        sees step i as t = i/T)."""
        return self.schedule if self.discrete else self.sde.discretize(T)

    def latent_terms(self, out) -> LatentTerms:
        """A VAE pass (`nvae.VAEOutput`) as the score model's latents (every group's ε, packed) and their log q."""
        return LatentTerms(self.vae.pack(out.eps), torch.stack(out.log_q_eps, 1).sum(1))

    def decoder(self, z: torch.Tensor):
        """p(x | z) of a latent model for the score model's latents z (every group's ε, packed): a deterministic
        function of z."""
        return self.vae.decode(self.vae.unpack(z), space="eps")

    def decode(self, z: torch.Tensor, mean: bool = False) -> torch.Tensor:
        """Images from the score model's latents: x ~ p(x | z) (or its mean) of `decoder`; in pixel space the latent
        is the image (clamped to [−1, 1] for discrete data)."""
        if self.vae is None:
            return z if self.levels is None else z.clamp(-1, 1)
        dist = self.decoder(z)
        return dist.mean() if mean else dist.sample()

    def encode(self, x: torch.Tensor, mean: bool = False) -> torch.Tensor:
        """A posterior sample (mean: the chain of posterior means) of the latents as the score model sees them
        (every group's prior-standardised ε, packed); the image itself in pixel space."""
        if self.vae is None:
            return x
        return self.vae.pack(self.vae.encode(x, mean).eps)
