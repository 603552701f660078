"""An NVAE-style hierarchical VAE; usable on its own, knows nothing of SDEs."""

from nvae.model import NVAE, Latents, VAEOutput, nats_to_bpd

__all__ = ["NVAE", "Latents", "VAEOutput", "nats_to_bpd"]
