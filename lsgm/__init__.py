"""LSGM: a VAE and a latent score model trained jointly; data, training, evaluation, applications.

`lsgm.load(path)` returns a trained model (EMA weights, eval mode) ready to sample and evaluate.
"""

from .build import load

__all__ = ["load"]
