"""LSGM's bound with the score model at its N(0, I) base is the VAE's own bound.

The score model lives in the VAE's prior-standardised coordinates ε (`nvae.model`), where the VAE's hierarchical
prior p(z_1) p(z_2 | z_1) … is exactly N(0, I). With the mixing logit at −∞ the mixed score is that N(0, I), whose
probability-flow ODE does not move (drift −½βz + ½βz = 0), so the ODE likelihood is log N(ε; 0, I) and the
importance-weighted bound must equal the VAE's own IWAE bound draw for draw.
"""

import math

import torch

import nvae
import sde
from lsgm.models import LSGM
from nvae.distributions import bin_centers

from .test_objective import Zero


@torch.no_grad()
def test_latent_nll_at_the_normal_base_is_the_vae_bound():
    torch.manual_seed(0)
    vae = nvae.NVAE(channels=8, num_scales=2, groups_per_scale=[2, 1], latent_channels=2, cells_per_group=1,
                    num_preprocess=1, dropout=0.0).eval()
    model = LSGM(Zero(), sde.VPSDE("geometric"), vae=vae, data_shape=(1, 8, 8), levels=17,
                 mixing_logit_init=-math.inf).eval()
    x = bin_centers(17)[torch.randint(17, (5, 1, 8, 8))]
    torch.manual_seed(1)
    lsgm_nats, _ = model.nll(x, k=3)
    torch.manual_seed(1)
    vae_nats = vae.nll(x, k=3)
    assert torch.allclose(lsgm_nats, vae_nats, atol=1e-3, rtol=0), (lsgm_nats, vae_nats)
    torch.manual_seed(1)
    out = vae(x)
    top_z_under_normal = sum(torch.distributions.Normal(0.0, 1.0).log_prob(z).flatten(1).sum(1) for z in out.z[:2])
    assert not torch.allclose(top_z_under_normal, sum(out.log_p[:2]), atol=1e-1)  # z itself would not do
