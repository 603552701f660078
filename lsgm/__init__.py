"""LSGM: a VAE and a latent score model trained jointly; data, training, evaluation, applications."""
