"""Perceptual distances: LPIPS' formula over any feature network (`FeatureDistance`), its VGG16 trunk
(`VGG16Features`), LPIPS (VGG) from a local file (`lpips`), and `python -m autoencoder.perceptual convert` to make
that file."""

from .convert import convert
from .distance import FeatureDistance
from .vgg import VGG16Features, lpips, lpips_module

__all__ = ["FeatureDistance", "VGG16Features", "convert", "lpips", "lpips_module"]
