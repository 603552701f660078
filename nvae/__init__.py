"""An NVAE-style hierarchical VAE; usable on its own, knows nothing of SDEs."""
