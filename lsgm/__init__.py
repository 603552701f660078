"""LSGM: a VAE and a latent score model trained jointly; data, training, evaluation, applications.

`lsgm.load(path)` returns a trained model (EMA weights, eval mode) ready to sample and evaluate;
`lsgm.save_pretrained(model, folder)` writes it for sharing (safetensors + JSON), `lsgm.from_pretrained(folder)`
reads it back. `lsgm.config_dir()` is the folder of the hydra configs (the clone's configs/ or the installed copy).
"""

from .build import load
from .checkpoint import from_pretrained, save_pretrained
from .paths import config_dir

__all__ = ["config_dir", "from_pretrained", "load", "save_pretrained"]
