"""The hierarchical VAE (NVAE, Vahdat & Kautz 2020) with its own residual-Normal prior.

Bottom-up, an encoder tower turns x into one feature map per latent group. Top-down, a decoder walks
the groups from the coarsest scale to the finest, g = 1..G; at each group its state h gives the
conditional prior p(z_g | z_<g) = N(mu_p, sigma_p) (N(0, I) for the first group), and with the encoder
feature the residual posterior q(z_g | x, z_<g) = N(mu_p + dmu, sigma_p * exp(dlog_sigma)). The sample z_g
is merged into h, and after the last group h is turned into the output distribution p(x | z).

ELBO(x) = E_q[log p(x | z)] - sum_g E_q[KL(q(z_g | x, z_<g) || p(z_g | z_<g))]

Every group also has prior-standardised coordinates eps_g = (z_g - mu_p) / sigma_p, in which the VAE's
hierarchical prior is exactly N(0, I) and the prior's conditionals become part of the decoder
(z_g = mu_p(z_<g) + sigma_p(z_<g) eps_g). The map is triangular with Jacobian prod_g sigma_p, so
log q(eps_g | x, eps_<g) = log q(z_g | x, z_<g) + sum log sigma_p. LSGM's score model lives in these
coordinates: its N(0, I) base is then the VAE's own prior, not a weaker replacement for it.

``pack`` lays every group on the top scale's grid (space-to-depth of the finer scales, concatenated along
channels), so that one tensor of ``latent_shape`` carries all of the latents the decoder uses; with a single scale
it is the groups concatenated along channels, as in LSGM's own recipes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from nvae.cells import DecoderCell, EncoderCell
from nvae.distributions import DiscreteImageDistribution, Normal, output_distribution, output_param_channels
from nvae.layers import Conv2d
from nvae.regularizers import balanced_kl, norm_loss, spectral_norm_loss

SOFT_CLAMP = 5.0


def soft_clamp(x: torch.Tensor, bound: float = SOFT_CLAMP) -> torch.Tensor:
    """bound * tanh(x / bound): smooth clamp of Normal parameters to (-bound, bound) (NVAE's NaN guard)."""
    return bound * torch.tanh(x / bound)


def nats_to_bpd(nats: torch.Tensor, dims: int) -> torch.Tensor:
    """bits/dim = nats / (D ln 2)."""
    return nats / (dims * math.log(2.0))


@dataclass
class Latents:
    """Posterior latents per group, top (coarsest) scale first; every per-sample term is (B,)."""

    z: list[torch.Tensor]
    mu: list[torch.Tensor]
    log_std: list[torch.Tensor]
    log_q: list[torch.Tensor]  # log q(z_g | x, z_<g) at the sample
    log_p: list[torch.Tensor]  # log p(z_g | z_<g) under the VAE's own prior
    kl: list[torch.Tensor]  # analytic KL(q(z_g | x, z_<g) || p(z_g | z_<g)), summed over the group
    kl_elements: list[torch.Tensor]  # the same KL per latent element, (B, C, H, W)
    eps: list[torch.Tensor]  # prior-standardised eps_g = (z_g - mu_p) / sigma_p
    log_q_eps: list[torch.Tensor]  # log q(eps_g | x, eps_<g) = log q(z_g | x, z_<g) + sum log sigma_p
    eps_mean: list[torch.Tensor]  # q(eps_g | x, eps_<g) = N(eps_mean, eps_std²): (mu_q - mu_p) / sigma_p
    eps_std: list[torch.Tensor]  # sigma_q / sigma_p


@dataclass
class VAEOutput(Latents):
    """One encoder + decoder pass: the posterior latents and the output distribution p(x | z)."""

    dist: DiscreteImageDistribution | None = None


@dataclass(frozen=True)
class GroupSpec:
    """Where a latent group lives: its scale (0 = top), halvings of the image resolution, resolution
    and channels."""

    scale: int
    downs: int
    size: int
    channels: int
    first_in_scale: bool


class LatentGroup(nn.Module):
    """The top-down machinery of one latent group.

    block:     decoder cells run on h before this group (an up cell first at a new scale);
    prior:     h -> (mu_p, log_sigma_p) by ELU-conv3x3 (absent for the first group: N(0, I));
    combine_q: the posterior's input, enc_feature + conv1x1(h) (first group: ELU-conv1x1-ELU(enc_feature));
    posterior: conv3x3 -> (dmu, dlog_sigma);
    combine_z: h <- conv1x1([h, z_g]).
    """

    def __init__(self, spec: GroupSpec, latent_channels: int, block: nn.Module | None):
        super().__init__()
        ch, size, lat = spec.channels, spec.size, latent_channels
        self.top = block is None
        self.block = nn.Identity() if block is None else block
        self.prior = None if self.top else nn.Sequential(nn.ELU(), Conv2d(ch, 2 * lat, 3, size))
        self.combine_q = (nn.Sequential(nn.ELU(), Conv2d(ch, ch, 1, size), nn.ELU()) if self.top
                          else Conv2d(ch, ch, 1, size))
        self.posterior = Conv2d(ch, 2 * lat, 3, size)
        self.combine_z = Conv2d(ch + lat, ch, 1, size)
        self.shape = (lat, size, size)

    def prior_dist(self, h: torch.Tensor) -> Normal:
        """p(z_g | z_<g) = N(soft_clamp(mu_p), exp(soft_clamp(log_sigma_p)))."""
        if self.prior is None:
            return Normal.standard((h.shape[0], *self.shape), h.device, h.dtype)
        mu, log_std = self.prior(h).chunk(2, dim=1)
        return Normal(soft_clamp(mu), soft_clamp(log_std))

    def posterior_dist(self, h: torch.Tensor, feature: torch.Tensor, prior: Normal) -> Normal:
        """q(z_g | x, z_<g) = N(mu_p + soft_clamp(dmu), exp(log_sigma_p + soft_clamp(dlog_sigma)))."""
        ftr = self.combine_q(feature) if self.top else feature + self.combine_q(h)
        d_mu, d_log_std = self.posterior(ftr).chunk(2, dim=1)
        return Normal(prior.mu + soft_clamp(d_mu), prior.log_std + soft_clamp(d_log_std))

    def merge(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.combine_z(torch.cat([h, z], dim=1))


class NVAE(nn.Module):
    """Hierarchical VAE over images in [-1, 1] with ``levels`` values per pixel.

    Layout: stem conv, ``num_preprocess`` blocks of (cells, down cell), then ``num_scales`` latent scales
    (resolution halves and channels grow by ``channel_mult`` towards the top); ``groups_per_scale``
    (int, or one int per scale listed top first) groups of ``latent_channels`` each; ``cells_per_group``
    cells between groups; the decoder mirrors it and ends with ELU-conv3x3 into the ``output``
    distribution ('categorical', 'logistic_mixture', 'gaussian', 'bernoulli').
    """

    def __init__(self, in_channels: int = 1, image_size: int = 8, levels: int = 17, channels: int = 32,
                 num_scales: int = 2, groups_per_scale: int | Sequence[int] = 2, latent_channels: int = 4,
                 cells_per_group: int = 1, num_preprocess: int = 1, channel_mult: int = 2,
                 output: str = "categorical", num_mixtures: int = 3, norm: str = "group",
                 dropout: float = 0.1, decoder_expansion: int = 3):
        super().__init__()
        self.config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}  # NVAE(**config)
        factor = 2 ** (num_preprocess + num_scales - 1)
        if image_size % factor:
            raise ValueError(f"image_size {image_size} must be divisible by 2**(num_preprocess + num_scales"
                             f" - 1) = {factor}; lower num_preprocess or num_scales")
        groups = [groups_per_scale] * num_scales if isinstance(groups_per_scale, int) else [*groups_per_scale]
        if len(groups) != num_scales or min(groups) < 1:
            raise ValueError(f"groups_per_scale needs {num_scales} positive entries (top first), "
                             f"got {groups}")
        self.in_channels, self.image_size, self.levels = in_channels, image_size, levels
        self.output, self.num_mixtures = output, num_mixtures
        self.num_dims = in_channels * image_size * image_size
        self.channels, self.channel_mult, self.cells_per_group = channels, channel_mult, cells_per_group
        self.specs = [GroupSpec(s, downs, self._size(downs), self._width(downs), g == 0)
                      for s in range(num_scales)  # s = 0 is the top scale
                      for downs in [num_preprocess + num_scales - 1 - s] for g in range(groups[s])]
        self._build_encoder(num_preprocess, {"norm": norm, "dropout": dropout})
        self._build_decoder(num_preprocess, latent_channels,
                            {"norm": norm, "dropout": dropout, "expansion": decoder_expansion},
                            in_channels * output_param_channels(output, levels, num_mixtures))
        area = torch.tensor([float(s.size**2) for s in self.specs])
        alpha = area / torch.tensor([float(groups[s.scale]) for s in self.specs])
        self.register_buffer("kl_alpha", alpha / alpha.min(), persistent=False)  # relative group sizes
        top_size = self.specs[0].size
        self.latent_shape = (sum(latent_channels * (s.size // top_size) ** 2 for s in self.specs), top_size, top_size)

    def _width(self, downs: int) -> int:
        """Channels after ``downs`` halvings of the resolution."""
        return self.channels * self.channel_mult**downs

    def _size(self, downs: int) -> int:
        return self.image_size // 2**downs

    def _cells(self, kind: type[nn.Module], downs: int, cell: dict) -> list[nn.Module]:
        """``cells_per_group`` cells that keep the resolution and width at ``downs`` halvings."""
        width, size = self._width(downs), self._size(downs)
        return [kind(width, width, size, **cell) for _ in range(self.cells_per_group)]

    def _build_encoder(self, num_preprocess: int, cell: dict) -> None:
        """Bottom-up: stem, (cells, down cell) per preprocessing level, then cells per group from the
        finest scale to the top with a down cell between scales."""
        self.stem = Conv2d(self.in_channels, self.channels, 3, self.image_size)
        pre = []
        for d in range(num_preprocess):
            pre += self._cells(EncoderCell, d, cell)
            pre.append(EncoderCell(self._width(d), self._width(d + 1), self._size(d), downsample=True,
                                   **cell))
        self.preprocess = nn.Sequential(*pre)
        self.encoder_groups, self.encoder_down = nn.ModuleList(), nn.ModuleList()
        for spec in reversed(self.specs):
            self.encoder_groups.append(nn.Sequential(*self._cells(EncoderCell, spec.downs, cell)))
            if spec.first_in_scale and spec.scale > 0:
                self.encoder_down.append(EncoderCell(spec.channels, self._width(spec.downs + 1), spec.size,
                                                     downsample=True, **cell))

    def _build_decoder(self, num_preprocess: int, latent_channels: int, cell: dict,
                       param_channels: int) -> None:
        """Top-down: a learned input, one LatentGroup per group (its block: an up cell at a new scale,
        then cells), (up cell, cells) per preprocessing level, and the ELU-conv3x3 output head."""
        top = self.specs[0]
        self.decoder_input = nn.Parameter(torch.rand(1, top.channels, top.size, top.size))
        self.groups = nn.ModuleList()
        for i, spec in enumerate(self.specs):
            block = None
            if i > 0:
                up = [DecoderCell(self._width(spec.downs + 1), spec.channels, spec.size // 2, upsample=True,
                                  **cell)] if spec.first_in_scale else []
                block = nn.Sequential(*up, *self._cells(DecoderCell, spec.downs, cell))
            self.groups.append(LatentGroup(spec, latent_channels, block))
        post = []
        for d in reversed(range(num_preprocess)):
            post.append(DecoderCell(self._width(d + 1), self._width(d), self._size(d + 1), upsample=True,
                                    **cell))
            post += self._cells(DecoderCell, d, cell)
        self.postprocess = nn.Sequential(*post)
        self.head = nn.Sequential(nn.ELU(), Conv2d(self.channels, param_channels, 3, self.image_size))

    # ----------------------------------------------------------------------------------- latents
    @property
    def group_shapes(self) -> list[tuple[int, int, int]]:
        """(C, H, W) of every latent group, top first."""
        return [g.shape for g in self.groups]

    def _pack_factors(self) -> list[int]:
        """r_g = (group resolution) / (top resolution) for every group, top first."""
        return [spec.size // self.specs[0].size for spec in self.specs]

    def pack(self, z: Sequence[torch.Tensor]) -> torch.Tensor:
        """Every group on the top scale's grid, (B, *latent_shape): a group of C channels at r·h × r·w is moved
        lossless to C·r² channels at h × w by space-to-depth (pixel_unshuffle, r = 1 on the top scale), and the
        groups are concatenated along channels, top first. ``unpack`` inverts it exactly."""
        if len(z) != len(self.specs):
            raise ValueError(f"pack needs all {len(self.specs)} latent groups, got {len(z)}")
        return torch.cat([F.pixel_unshuffle(z_g, r) for z_g, r in zip(z, self._pack_factors())], dim=1)

    def unpack(self, packed: torch.Tensor) -> list[torch.Tensor]:
        """Inverse of ``pack``: the list of groups at their own resolutions, top first."""
        factors = self._pack_factors()
        sizes = [shape[0] * r**2 for shape, r in zip(self.group_shapes, factors)]
        if packed.dim() != 4 or tuple(packed.shape[1:]) != self.latent_shape:
            raise ValueError(f"unpack needs (B, *{self.latent_shape}), got {tuple(packed.shape)}")
        return [F.pixel_shuffle(part, r) for part, r in zip(packed.split(sizes, dim=1), factors)]

    def _encoder_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Bottom-up pass: one feature map per group, returned top first."""
        h = self.preprocess(self.stem(x))
        features, downs = [], iter(self.encoder_down)
        for block, spec in zip(self.encoder_groups, reversed(self.specs)):
            h = block(h)
            features.append(h)
            if spec.first_in_scale and spec.scale > 0:
                h = next(downs)(h)
        return features[::-1]

    def _initial_state(self, batch_size: int) -> torch.Tensor:
        return self.decoder_input.expand(batch_size, -1, -1, -1)

    def _top_down_posterior(self, x: torch.Tensor, mean: bool = False) -> tuple[torch.Tensor, Latents]:
        """Top-down pass with z_g ~ q(z_g | x, z_<g) (mean: z_g = its mean, each group conditioned on the means
        above it); returns the final decoder state and the latents."""
        features = self._encoder_features(x)
        h = self._initial_state(x.shape[0])
        latents = Latents(*([] for _ in fields(Latents)))
        for group, feature in zip(self.groups, features):
            h = group.block(h)
            prior = group.prior_dist(h)
            q = group.posterior_dist(h, feature, prior)
            z = q.mu if mean else q.sample()
            log_q = q.log_prob(z).flatten(1).sum(1)
            latents.z.append(z)
            latents.mu.append(q.mu)
            latents.log_std.append(q.log_std)
            latents.log_q.append(log_q)
            latents.log_p.append(prior.log_prob(z).flatten(1).sum(1))
            kl = q.kl(prior)
            latents.kl_elements.append(kl)
            latents.kl.append(kl.flatten(1).sum(1))
            latents.eps.append((z - prior.mu) / prior.std)
            latents.log_q_eps.append(log_q + prior.log_std.flatten(1).sum(1))
            latents.eps_mean.append((q.mu - prior.mu) / prior.std)
            latents.eps_std.append(torch.exp(q.log_std - prior.log_std))
            h = group.merge(h, z)
        return h, latents

    def _output(self, h: torch.Tensor) -> DiscreteImageDistribution:
        params = self.head(self.postprocess(h))
        return output_distribution(self.output, params, self.in_channels, self.levels, self.num_mixtures)

    def encode(self, x: torch.Tensor, mean: bool = False) -> Latents:
        """Posterior samples (mean: the top-down chain of posterior means), parameters, log q, log p, KL and the
        prior-standardised latents per group (top first) for images x."""
        return self._top_down_posterior(x, mean)[1]

    def forward(self, x: torch.Tensor) -> VAEOutput:
        """One encoder + decoder pass with posterior samples."""
        h, latents = self._top_down_posterior(x)
        return VAEOutput(**vars(latents), dist=self._output(h))

    def decode(self, z: Sequence[torch.Tensor | None], temperature: float = 1.0,
               batch_size: int | None = None, space: str = "z",
               generator: torch.Generator | None = None) -> DiscreteImageDistribution:
        """p(x | z) for a list of groups (top first); a None entry is drawn from the VAE's conditional
        prior p(z_g | z_<g) with its std scaled by ``temperature``. With ``space="eps"`` the given entries are
        prior-standardised eps_g and z_g = mu_p + sigma_p eps_g. ``batch_size`` is needed only when every entry
        is None. Prior draws come from `generator` (torch's global one by default)."""
        if space not in ("z", "eps"):
            raise ValueError(f"space must be 'z' or 'eps', got {space!r}")
        if len(z) != len(self.groups):
            raise ValueError(f"decode needs {len(self.groups)} latent groups (None to sample), got {len(z)}")
        given = [t for t in z if t is not None]
        if not given and batch_size is None:
            raise ValueError("decode got no latent tensor: pass batch_size to sample every group")
        h = self._initial_state(given[0].shape[0] if given else batch_size)
        for group, z_g in zip(self.groups, z):
            h = group.block(h)
            prior = group.prior_dist(h)
            if z_g is None:
                z_g = prior.sample(temperature, generator)
            elif space == "eps":
                z_g = prior.mu + prior.std * z_g
            h = group.merge(h, z_g)
        return self._output(h)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, mean: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """n images in [-1, 1] from the VAE's own prior: x ~ p(x | z) (or its mean), z ~ p_T(z); every draw from
        `generator` (torch's global one by default)."""
        dist = self.decode([None] * len(self.groups), temperature, batch_size=n, generator=generator)
        return dist.mean() if mean else dist.sample(generator)

    # ----------------------------------------------------------------------------------- objectives
    def loss(self, x: torch.Tensor, kl_weight: float = 1.0, kl_balance: bool = True) -> dict:
        """Negative ELBO with the KL weighted (and balanced during warm-up, see ``balanced_kl``):
        loss = mean_B[ -log p(x | z) + kl_weight * sum_g gamma_g KL_g ], z ~ q.

        Returns 'loss' (scalar), 'recon' = -log p(x | z) (B,), 'kl_groups' (B, G), 'elbo_nats' =
        log p(x | z) - sum_g KL_g (B,), a lower bound on log p(x), 'bpd' = -elbo / (D ln 2) (B,), and 'latents', the
        pass's `Latents` (for a prior model fitted alongside: the prior-standardised latents and their posteriors).
        """
        out = self(x)
        recon = -out.dist.log_prob(x)
        kl = torch.stack(out.kl, dim=1)
        kl_term = balanced_kl(kl, self.kl_alpha, kl_weight) if kl_balance else kl_weight * kl.sum(1)
        elbo = -(recon + kl.sum(1))
        return {"loss": (recon + kl_term).mean(), "recon": recon, "kl_groups": kl, "elbo_nats": elbo,
                "bpd": nats_to_bpd(-elbo, self.num_dims), "latents": out}

    @torch.no_grad()
    def nll(self, x: torch.Tensor, k: int = 100, max_batch: int = 4096) -> torch.Tensor:
        """Importance-weighted bound (Burda et al. 2016) on -log p(x), in nats, (B,):
        -log (1/k) sum_i p(x | z_i) p(z_i) / q(z_i | x),  z_i ~ q(z | x);
        it is >= -log p(x) and tightens as k grows; k = 1 is the single-sample ELBO.
        Samples are drawn in chunks of at most ``max_batch`` images. Call it in eval mode (dropout off,
        BatchNorm on its running statistics)."""
        b = x.shape[0]
        per_chunk = max(1, max_batch // b)
        log_w = []
        for start in range(0, k, per_chunk):
            c = min(per_chunk, k - start)
            xr = x.repeat(c, *([1] * (x.dim() - 1)))
            out = self(xr)
            w = out.dist.log_prob(xr) + sum(lp - lq for lp, lq in zip(out.log_p, out.log_q))
            log_w.append(w.view(c, b))
        return math.log(k) - torch.logsumexp(torch.cat(log_w, dim=0), dim=0)

    def nll_bpd(self, x: torch.Tensor, k: int = 100, max_batch: int = 4096) -> torch.Tensor:
        """``nll`` in bits/dim, (B,)."""
        return nats_to_bpd(self.nll(x, k, max_batch), self.num_dims)

    def spectral_norm_loss(self, iterations: int = 1) -> torch.Tensor:
        """Sum of the spectral norms of every convolution (see ``nvae.regularizers``)."""
        return spectral_norm_loss(self, iterations)

    def norm_loss(self) -> torch.Tensor:
        """Sum over normalisation layers of max |gamma| (see ``nvae.regularizers``)."""
        return norm_loss(self)

