"""Latent Diffusion's first stage (Rombach et al. 2022): an autoencoder with downsampling factor f, KL- or
VQ-regularized, trained with L1 + perceptual losses and a PatchGAN on the hinge loss with an adaptive weight.

Independent of lsgm (which imports it); the perceptual loss and the discriminator take their networks as
arguments, and LPIPS weights come only from a local file (`lpips`, `python -m autoencoder.perceptual convert`).
"""

from .discriminator import PatchDiscriminator
from .losses import AutoencoderLoss, adaptive_weight, hinge_discriminator_loss, hinge_generator_loss
from .model import Autoencoder, AutoencoderOutput
from .perceptual import FeatureDistance, VGG16Features, lpips
from .regularizers import DiagonalGaussian, VectorQuantizer

__all__ = ["Autoencoder", "AutoencoderLoss", "AutoencoderOutput", "DiagonalGaussian", "FeatureDistance",
           "PatchDiscriminator", "VGG16Features", "VectorQuantizer", "adaptive_weight", "hinge_discriminator_loss",
           "hinge_generator_loss", "lpips"]
