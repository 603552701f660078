"""The model kinds, each behind one protocol so that training, evaluation and the applications never ask which
kind they hold.

    kind    class      what it is
    lsgm    LSGM       an NVAE + a score model over all of its latents, trained jointly (`models.latent`)
    vae     VAEAlone   the NVAE alone with its own hierarchical prior (`models.vae`)
    pixel   PixelSGM   a continuous-time score model of the images (`models.pixel`)
    ddpm    DDPM       DDPM's discrete chain of the images (`models.pixel`)
    ldm     LDM        Latent Diffusion: a first-stage autoencoder (KL or VQ, factor f), then a diffusion model on
                       its scaled latents (`models.ldm`)

Every kind has `kind`, `data_shape`, `levels` and
    phase(step, train) -> str                          the training phase of a step ("vae", "joint", "score", ...)
    losses(phase, x, options: LossOptions) -> Losses   the step's losses of the VAE's and the score model's updates
    validation_nats(x, phase, t_eps) -> (B,)           one stochastic draw of the validation bound per image
    nll(x, k, **ode) -> ((B,) nats, NFE)               the test NLL bound per image (`lsgm.evaluate.test_nll`)
    sample(n, sampler, ...) -> (images, NFE)           samples on the data's grid
    monitored() -> dict                                numbers logged beside the losses
    has_likelihood                                     whether `nll` bounds −log P(x) (an LDM's does not exist)
and the kinds with a diffusion prior (`ScoreModel`) also
    eps_fn(y, guidance), encode(x), decode(z), chain(T), x0_range(), diffusion_bound(x, T, ...),
    prepare_prior(x, train)
which the samplers, the likelihood and the applications use. `lsgm.build.build_model` makes the kind a config
names and checks the config against the kinds' legal combinations.
"""

from .base import Losses, LossOptions, ScoreModel
from .latent import INACTIVE_KL, INACTIVE_LOGIT, LSGM, LatentTerms
from .ldm import LDM, LikelihoodUndefined
from .pixel import DDPM, PixelSGM
from .vae import VAEAlone

KINDS = {"lsgm": LSGM, "vae": VAEAlone, "pixel": PixelSGM, "ddpm": DDPM, "ldm": LDM}

__all__ = ["DDPM", "INACTIVE_KL", "INACTIVE_LOGIT", "KINDS", "LDM", "LSGM", "LatentTerms", "LikelihoodUndefined",
           "Losses", "LossOptions", "PixelSGM", "ScoreModel", "VAEAlone"]
