"""Objects from a run's config: the SDE, the VAE, the score network, the LSGM model; and `load`."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from omegaconf import DictConfig, OmegaConf

import nvae
from sde import VPSDE

from .checkpoint import CheckpointError, load_checkpoint, load_model_state
from .conditioning import build_condition
from .data import load_dataset
from .model import LSGM
from .score_net import ScoreNet

SDE_ONLY_KEYS = ("discrete_steps", "t_eps")


def plain(cfg) -> dict:
    """A config section as a plain dict (resolved)."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)


def build_sde(cfg: Mapping) -> VPSDE:
    """VPSDE(schedule, ...) from the `sde` group; `discrete_steps`/`t_eps` belong to the model and trainer."""
    return VPSDE(**{k: v for k, v in plain(cfg).items() if k not in SDE_ONLY_KEYS})


def build_vae(cfg: Mapping, data_shape, levels: int | None):
    """An `nvae.NVAE` from the `vae` group, or None when `vae.name` is `none` (a pixel-space model)."""
    cfg = plain(cfg)
    if cfg.get("name", "nvae") == "none":
        return None
    if levels is None:
        raise ValueError("the VAE's decoder needs discrete data (levels); use vae=none for continuous toy data")
    channels, height, width = data_shape
    if height != width:
        raise ValueError(f"the VAE expects square images, got {height}x{width}")
    return nvae.NVAE(in_channels=channels, image_size=height, levels=levels, **cfg.get("params", {}))


def build_model(cfg: Mapping, data_shape, levels: int | None) -> LSGM:
    """The LSGM model of a run config (root config with `sde`, `vae`, `score`, optional `condition`)."""
    sde = build_sde(cfg["sde"])
    vae = build_vae(cfg["vae"], data_shape, levels)
    latent_shape = tuple(vae.latent_shape) if vae is not None else tuple(data_shape)
    score = plain(cfg["score"])
    condition = build_condition(plain(cfg["condition"]) if cfg.get("condition") else None, data_shape, latent_shape)
    net = ScoreNet(in_channels=latent_shape[0], image_size=latent_shape[1], **score.get("net", {}),
                   **(condition.network_arguments() if condition is not None else {}))
    vae_alone = plain(cfg.get("train", {})).get("mode") == "vae"
    return LSGM(net, sde, vae=vae, data_shape=data_shape, levels=levels,
                mixing_logit_init=score.get("mixing_logit_init", -3.0), mixed=score.get("mixed", True),
                discrete_steps=plain(cfg["sde"]).get("discrete_steps"), prior="vae" if vae_alone else "sgm",
                condition=condition)


def load_splits(data_cfg) -> dict:
    """train / val / test `ImageDataset`s of the `data` group."""
    cfg = plain(data_cfg)
    return {split: load_dataset(cfg["name"], root=cfg.get("root"), split=split,
                                val_fraction=cfg.get("val_fraction", 0.1), **cfg.get("options", {}))
            for split in ("train", "val", "test")}


def load(path, device: str | torch.device = "cpu", ema: bool = True) -> LSGM:
    """The trained model of a checkpoint, in eval mode, with the EMA weights of the score model (`ema=True`).

    The model carries its run config as `model.config` (a DictConfig).
    """
    state = load_checkpoint(path, map_location=device)
    config = OmegaConf.create(state["config"])
    try:
        model = build_model(config, state["data_shape"], state["levels"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: its config no longer builds a model ({error})") from None
    load_model_state(model, state["model"], path)
    if ema and state.get("ema") is not None:
        shadow = state["ema"]["shadow"]
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name in shadow:
                    parameter.copy_(shadow[name])
    model.config = config
    return model.to(device).eval()
