"""Objects from a run's config: the SDE, the VAE, the score network, the model of the config's kind; and `load`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

import autoencoder
import nvae
from sde import SDE, make_sde

from .checkpoint import CheckpointError, load_checkpoint, load_model_state, read_pretrained
from .conditioning import build_condition
from .data import load_dataset
from .metrics.digits_classifier import DigitsConvFeatures, load_digits_classifier
from .models import DDPM, LDM, LSGM, PixelSGM, VAEAlone
from .score_net import ScoreNet

# ${stage1_for:${kind},N} in a config: N first-stage steps for an LSGM or an LDM, 0 for the kinds that have no stage 1
OmegaConf.register_new_resolver("stage1_for", lambda kind, steps: int(steps) if kind in ("lsgm", "ldm") else 0,
                                replace=True)


def plain(cfg) -> dict:
    """A config section as a plain dict (resolved)."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)


def build_sde(cfg: Mapping) -> SDE:
    """The SDE of the `sde` group's `process` (`sde.make_sde`: kind vp | subvp | ve and its arguments)."""
    return make_sde(plain(cfg)["process"])


def build_vae(cfg: Mapping, data_shape, levels: int | None):
    """An `nvae.NVAE` from the `vae` group, or None when `vae.name` is `none` (a pixel-space model)."""
    cfg = plain(cfg)
    if cfg.get("name", "nvae") == "none":
        return None
    if levels is None:
        raise ValueError("the VAE's decoder needs discrete data (levels); for continuous data use a pixel-space kind")
    channels, height, width = data_shape
    if height != width:
        raise ValueError(f"the VAE expects square images, got {height}x{width}")
    return nvae.NVAE(in_channels=channels, image_size=height, levels=levels, **cfg.get("params", {}))


def build_autoencoder(cfg: Mapping, data_shape) -> autoencoder.Autoencoder:
    """LDM's first stage from the `autoencoder` group's `params` (`autoencoder.Autoencoder`)."""
    channels, height, width = data_shape
    if height != width:
        raise ValueError(f"the autoencoder expects square images, got {height}x{width}")
    return autoencoder.Autoencoder(in_channels=channels, image_size=height, **plain(cfg).get("params", {}))


def build_perceptual(name: str | None, path: str | None = None) -> nn.Module | None:
    """The perceptual distance of the first stage's loss: `digits` (the shipped digits classifier's conv features,
    unit-normalised, unweighted), `lpips` (VGG16 + LPIPS' linear heads, every weight from the local file `path`),
    or None."""
    if name is None:
        return None
    if name == "digits":
        return autoencoder.FeatureDistance(DigitsConvFeatures(load_digits_classifier()))
    if name == "lpips":
        if not path:
            raise ValueError("autoencoder.loss.perceptual=lpips needs autoencoder.loss.perceptual_path, a local "
                             "weights file (make it with: python -m autoencoder.perceptual convert --help)")
        return autoencoder.lpips(path)
    raise ValueError(f"unknown perceptual loss {name!r}; valid: digits, lpips, null")


def build_first_stage_loss(cfg: Mapping, data_shape) -> autoencoder.AutoencoderLoss:
    """The first stage's loss (`autoencoder.AutoencoderLoss`) with its PatchGAN discriminator (none when the group's
    `discriminator` is null or `loss.disc_factor` is 0) and perceptual network."""
    cfg = plain(cfg)
    loss = dict(cfg.get("loss", {}))
    perceptual = build_perceptual(loss.pop("perceptual", None), loss.pop("perceptual_path", None))
    options = cfg.get("discriminator")
    discriminator = (autoencoder.PatchDiscriminator(in_channels=data_shape[0], **options)
                     if options is not None and loss.get("disc_factor", 1.0) > 0 else None)
    return autoencoder.AutoencoderLoss(discriminator, perceptual, **loss)


def has_vae(cfg) -> bool:
    return plain(cfg["vae"]).get("name", "nvae") != "none"


def is_discrete(cfg) -> bool:
    return plain(cfg["score"]).get("discrete_steps") is not None


def is_vp(cfg) -> bool:
    return plain(cfg["sde"])["process"].get("kind", "vp") == "vp"


def normal_prior(cfg) -> bool:
    """The objectives' closed forms (`lsgm.objective`) take the SDE's prior to be N(0, I): VP and sub-VP."""
    return plain(cfg["sde"])["process"].get("kind", "vp") in ("vp", "subvp")


def normal_base_on_vp(cfg) -> bool:
    """The mixed and the residual score's base σ_t z_t is the exact ε of N(0, I) under the VP-SDE only."""
    score = plain(cfg["score"])
    return is_vp(cfg) or not (score.get("mixed", True) or score.get("residual", False))


def has_autoencoder(cfg) -> bool:
    return cfg.get("autoencoder") is not None


def no_stage1(cfg) -> bool:
    return plain(cfg.get("train", {})).get("stage1_steps", 0) == 0


# What each model kind needs of a config: (the requirement as a user fixes it, its test).
HAS_VAE = ("a VAE (vae=digits, vae=mnist, ...), not vae=none", has_vae)
CONTINUOUS = ("a continuous-time model (score.discrete_steps: null; a discrete chain is kind=ddpm)",
              lambda cfg: not is_discrete(cfg))
NORMAL_PRIOR = ("an SDE with a N(0, I) prior, VP or sub-VP (the objective's closed forms assume it; VE is refused)",
                normal_prior)
NORMAL_BASE = ("the VP-SDE for the mixed or residual score (sde=vp, geometric, cosine; or score.mixed: false)",
               normal_base_on_vp)
NO_STAGE1 = ("train.stage1_steps: 0 (no VAE to train first)", no_stage1)
NO_AUTOENCODER = ("autoencoder: null (a first-stage autoencoder is kind=ldm's)", lambda cfg: not has_autoencoder(cfg))
NOISE_TARGET = ("train.score_target: noise (the posterior_mixture target needs a VAE's posteriors: kind=lsgm)",
                lambda cfg: plain(cfg.get("train", {})).get("score_target", "noise") == "noise")
KIND_RULES = {
    "lsgm": (HAS_VAE, NO_AUTOENCODER, CONTINUOUS, NORMAL_PRIOR, NORMAL_BASE,
             ("train.mode joint or disjoint (the VAE alone is kind=vae)",
              lambda cfg: plain(cfg["train"]).get("mode") in ("joint", "disjoint"))),
    "vae": (HAS_VAE, NO_AUTOENCODER,
            ("no condition (a VAE alone is unconditional)", lambda cfg: not cfg.get("condition"))),
    "pixel": (("vae=none (a pixel-space model has no VAE)", lambda cfg: not has_vae(cfg)), NO_AUTOENCODER, CONTINUOUS,
              NORMAL_PRIOR, NORMAL_BASE, NO_STAGE1, NOISE_TARGET),
    "ddpm": (("vae=none (DDPM is a pixel-space chain)", lambda cfg: not has_vae(cfg)), NO_AUTOENCODER,
             ("a discrete chain: score.discrete_steps: T", is_discrete),
             ("the VP-SDE, which DDPM's chain discretises (sde=ddpm, vp, ...)", is_vp),
             ("score.mixed: false and score.residual: false (DDPM's network predicts ε itself)",
              lambda cfg: not (plain(cfg["score"]).get("mixed", True) or plain(cfg["score"]).get("residual"))),
             NO_STAGE1, NOISE_TARGET),
    "ldm": (("an autoencoder (autoencoder=digits_kl, digits_vq, ...)", has_autoencoder),
            ("vae=none (the first stage is the autoencoder)", lambda cfg: not has_vae(cfg)), CONTINUOUS,
            NORMAL_PRIOR, NORMAL_BASE,
            ("train.stage1_steps > 0 for the autoencoder, or train.first_stage (a trained one)",
             lambda cfg: not no_stage1(cfg) or bool(plain(cfg["train"]).get("first_stage"))),
            ("train.score_in_stage1: false (the latents and their scale change until stage 2)",
             lambda cfg: not plain(cfg["train"]).get("score_in_stage1")), NOISE_TARGET),
}


def config_kind(cfg) -> str:
    """The config's model kind (`kind`), checked against `KIND_RULES`: one error lists every unmet requirement."""
    kind = cfg.get("kind")
    if kind not in KIND_RULES:
        raise ValueError(f"unknown kind {kind!r}; valid: {list(KIND_RULES)}")
    unmet = [need for need, holds in KIND_RULES[kind] if not holds(cfg)]
    if unmet:
        raise ValueError(f"kind={kind} needs " + "; ".join(unmet) +
                         " (or pick another kind: the experiment presets set kind with its groups)")
    return kind


def build_model(cfg: Mapping, data_shape, levels: int | None, num_classes: int | None = None) -> nn.Module:
    """The model of a run config (root config with `kind`, `sde`, `vae`, `score`, optional `condition`), one of
    `lsgm.models.KINDS`; `num_classes` is the dataset's (for a class condition)."""
    kind = config_kind(cfg)
    vae = build_vae(cfg["vae"], data_shape, levels) if kind in ("lsgm", "vae") else None
    if kind == "vae":
        return VAEAlone(vae, data_shape, levels)
    sde = build_sde(cfg["sde"])
    first_stage = build_autoencoder(cfg["autoencoder"], data_shape) if kind == "ldm" else vae
    latent_shape = tuple(first_stage.latent_shape) if first_stage is not None else tuple(data_shape)
    score = plain(cfg["score"])
    condition = build_condition(plain(cfg["condition"]) if cfg.get("condition") else None, data_shape, latent_shape,
                                num_classes)
    net = ScoreNet(in_channels=latent_shape[0], image_size=latent_shape[1], **score.get("net", {}),
                   **(condition.network_arguments() if condition is not None else {}))
    if kind == "ddpm":
        return DDPM(net, sde, score["discrete_steps"], data_shape, levels, condition)
    mixing = {"mixing_logit_init": score.get("mixing_logit_init", -3.0), "mixed": score.get("mixed", True),
              "residual": score.get("residual", False)}
    if kind == "pixel":
        return PixelSGM(net, sde, data_shape, levels, condition=condition, **mixing)
    if kind == "ldm":
        return LDM(net, sde, first_stage, build_first_stage_loss(cfg["autoencoder"], data_shape), data_shape, levels,
                   plain(cfg["autoencoder"]).get("scale_factor"), condition, **mixing)
    return LSGM(net, sde, vae, data_shape, levels, condition=condition, **mixing)


def upgrade_config(config: DictConfig) -> DictConfig:
    """A checkpoint's config written before model kinds, in this version's layout (a copy): `kind` from the flags
    that meant it (no VAE: ddpm for a discrete chain, else pixel; train.mode=vae: vae; else lsgm), the `sde`
    group's SDE keys under `process`, `discrete_steps` in the score group. A current config is returned as it is."""
    if "kind" in config:
        return config
    old = plain(config)
    sde_keys = dict(old["sde"])
    steps, t_eps = sde_keys.pop("discrete_steps", None), sde_keys.pop("t_eps", 1e-2)
    old["sde"] = {"process": sde_keys, "t_eps": t_eps}
    old["score"] = {**old["score"], "discrete_steps": steps}
    mode = old.get("train", {}).get("mode")
    has_vae = old["vae"].get("name", "nvae") != "none"
    old["kind"] = ("ddpm" if steps is not None else "pixel") if not has_vae else "vae" if mode == "vae" else "lsgm"
    if mode == "vae":
        old["train"]["mode"] = "joint"
    return OmegaConf.create(old)


def vae_weights(model: nn.Module, state_dict: dict) -> dict:
    """A VAE-alone model's weights of a state dict: VAE-alone checkpoints written before kinds also hold the
    unused score network they were built with. Any other kind's state dict is returned as it is."""
    if model.kind == "vae":
        return {name: value for name, value in state_dict.items() if name.startswith("vae.")}
    return state_dict


def load_first_stage(model: nn.Module, path) -> None:
    """Load the first stage of a trained run into `model` (LDM's stage 2 from a separate stage-1 run): every weight
    and buffer under `autoencoder.` of the checkpoint (or `save_pretrained` folder) at `path`, which must match
    this model's autoencoder."""
    if getattr(model, "autoencoder", None) is None:
        raise ValueError(f"train.first_stage is for kind=ldm (a first-stage autoencoder); this model is {model.kind}")
    state = read_pretrained(path) if Path(path).is_dir() else load_checkpoint(path, map_location="cpu")
    prefix = "autoencoder."
    weights = {name[len(prefix):]: value for name, value in state["model"].items() if name.startswith(prefix)}
    if not weights:
        raise CheckpointError(f"{path} holds no first-stage autoencoder (no 'autoencoder.*' weights)")
    try:
        model.autoencoder.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: its autoencoder does not match this config's ({error})") from None


def load_splits(data_cfg) -> dict:
    """train / val / test `ImageDataset`s of the `data` group."""
    cfg = plain(data_cfg)
    return {split: load_dataset(cfg["name"], root=cfg.get("root"), split=split,
                                val_fraction=cfg.get("val_fraction", 0.1), **cfg.get("options", {}))
            for split in ("train", "val", "test")}


def load(path, device: str | torch.device = "cpu", ema: bool = True) -> nn.Module:
    """The trained model of a checkpoint, in eval mode, with the EMA weights of the score model (`ema=True`); or of a
    `save_pretrained` folder when `path` is a directory (its weights are the EMA ones already).

    Checkpoints are read without running code (`lsgm.checkpoint.load_checkpoint`); an `lsgm-checkpoint-v1` file is
    read too, with a `LegacyCheckpointWarning`. The model carries its run config as `model.config` (a DictConfig).
    """
    if Path(path).is_dir():
        state = read_pretrained(path)
    else:
        state = load_checkpoint(path, map_location=device, legacy=True)
    config = upgrade_config(OmegaConf.create(state["config"]))
    try:
        model = build_model(config, state["data_shape"], state["levels"], state.get("num_classes"))
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: its config no longer builds a model ({error})") from None
    load_model_state(model, vae_weights(model, state["model"]), path)
    if ema and state.get("ema") is not None:
        shadow = state["ema"]["shadow"]
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name in shadow:
                    parameter.copy_(shadow[name])
    model.config = config
    return model.to(device).eval()
