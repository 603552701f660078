"""Tests of the autoencoder package (latent-diffusion's first stage)."""
