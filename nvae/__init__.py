"""An NVAE-style hierarchical VAE; usable on its own, knows nothing of SDEs.

    vae = nvae.NVAE(in_channels=1, image_size=8, levels=17)   # digits defaults
    cfg = nvae.FitConfig()                                     # optimiser and regularised loss settings
    optimizer = nvae.make_optimizer(vae.parameters(), cfg)
    loss = nvae.training_loss(vae, x, nvae.kl_warmup_weight(step / steps, 0.3), cfg)["loss"]
    bpd = vae.eval().nll_bpd(x_test, k=100)                    # IWAE bound, bits/dim

The training loop around these pieces is lsgm's trainer: `python train_joint.py experiment=digits_vae`.
"""

from nvae import train
from nvae.model import NVAE, Latents, VAEOutput, nats_to_bpd
from nvae.train import FitConfig, kl_warmup_weight, make_optimizer, training_loss, warmup_cosine_lr

__all__ = ["NVAE", "FitConfig", "Latents", "VAEOutput", "kl_warmup_weight", "make_optimizer", "nats_to_bpd",
           "train", "training_loss", "warmup_cosine_lr"]
