"""NVAE's extra training terms: spectral regularisation, the norm-scale penalty and KL balancing."""

from __future__ import annotations

import torch
import torch.nn as nn

from nvae.layers import Conv2d


def spectral_norm_loss(module: nn.Module, iterations: int = 1) -> torch.Tensor:
    """L_SR = sum over every tracked convolution of its largest singular value sigma(W)
    (each estimate advanced by ``iterations`` power steps first)."""
    sigmas = [m.spectral_norm(iterations) for m in module.modules() if isinstance(m, Conv2d)]
    return torch.stack(sigmas).sum() if sigmas else torch.zeros(())


def norm_loss(module: nn.Module) -> torch.Tensor:
    """L_BN = sum over every affine BatchNorm/GroupNorm layer of max_c |gamma_c| (NVAE's penalty that
    keeps normalisation scales from growing without bound)."""
    norms = (nn.BatchNorm2d, nn.GroupNorm)
    scales = [m.weight.abs().max() for m in module.modules() if isinstance(m, norms) and m.weight is not None]
    return torch.stack(scales).sum() if scales else torch.zeros(())


def balanced_kl(kl_groups: torch.Tensor, alpha: torch.Tensor, kl_weight: float = 1.0) -> torch.Tensor:
    """KL term of the loss per sample, (B,), from the per-group KLs ``kl_groups`` (B, G).

    With kl_weight = 1 it is sum_g KL_g. During warm-up (kl_weight < 1) NVAE's balancing reweights the
    groups, gamma_g proportional to mean_batch(|KL_g|) / alpha_g (plus 0.01), normalised to mean 1 and held
    constant (no gradient), so that groups carrying more information pay more and no group collapses;
    alpha_g is the group's relative size. Returns kl_weight * sum_g gamma_g KL_g.
    """
    if kl_weight >= 1.0:
        return kl_groups.sum(1)
    gamma = (kl_groups.abs().mean(0) + 0.01) / alpha
    gamma = (gamma / gamma.mean()).detach()
    return kl_weight * (kl_groups * gamma).sum(1)
