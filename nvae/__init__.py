"""An NVAE-style hierarchical VAE; usable on its own, knows nothing of SDEs.

    vae = nvae.NVAE(in_channels=1, image_size=8, levels=17)   # digits defaults
    result = nvae.fit(vae, nvae.train.batches(x_train, 64), nvae.FitConfig(max_seconds=600), val_x=x_val)
    bpd = vae.eval().nll_bpd(x_test, k=100)
"""

from nvae import train
from nvae.model import NVAE, Latents, VAEOutput, nats_to_bpd
from nvae.train import FitConfig, FitResult, fit

__all__ = ["NVAE", "FitConfig", "FitResult", "Latents", "VAEOutput", "fit", "nats_to_bpd", "train"]
