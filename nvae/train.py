"""The pieces of training the VAE: its regularised loss, its optimiser and its schedules.

The loop that uses them (batches, guarded steps, evaluation, checkpoints, resumption) is lsgm's one trainer,
`lsgm.train.Trainer`; `python train_joint.py experiment=digits_vae` trains the VAE alone through it. Schedules
take the run's progress p in [0, 1] (step / steps).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from nvae.model import NVAE


@dataclass
class FitConfig:
    """Settings of the VAE's optimiser (``make_optimizer``) and regularised loss (``training_loss``)."""

    optimizer: str = "adamax"  # 'adamax' (NVAE), 'adamw' or 'adam'
    lr: float = 1e-2
    weight_decay: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    kl_balance: bool = True
    spectral_weight: float = 1e-3
    norm_weight: float = 1e-3
    sn_iterations: int = 1


def kl_warmup_weight(p: float, warmup: float, min_weight: float = 1e-4) -> float:
    """beta(p) = max(min(p / warmup, 1), min_weight): NVAE's linear KL warm-up (1 when warmup = 0)."""
    if warmup <= 0:
        return 1.0
    return max(min(p / warmup, 1.0), min_weight)


def warmup_cosine_lr(p: float, lr: float, min_lr: float, warmup: float) -> float:
    """lr(p) = lr * max(p, 1e-3) / warmup for p < warmup, then min_lr + (lr - min_lr)(1 + cos(pi q)) / 2 with
    q = (p - warmup) / (1 - warmup)."""
    if p < warmup:
        return lr * max(p, 1e-3) / warmup
    q = (p - warmup) / max(1.0 - warmup, 1e-12)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * min(q, 1.0)))


class InPlaceAdamax(torch.optim.Adamax):
    """torch's Adamax (the same state, hyperparameters and update; checkpoints load either way) that works in its
    gradients instead of fresh buffers: it consumes them (after `step`, p.grad holds |g + λp| + eps):

        m ← β1 m + (1 − β1) g,   u ← max(β2 u, |g| + eps),   p ← p − lr/(1 − β1^t) · m/u      (g: grad + λ p)

    torch's multi-tensor Adamax allocates |g| (and g + λp) anew each step, as many tensors as weights; on a CPU a
    large allocation is fresh pages from the system each time. In place, the digits VAE's update (229 tensors,
    1.5 M weights) takes 6.4–6.5 ms a step instead of 7.1–7.4 inside the training step (alternated in one hour).
    It also reads the step counts in one go (torch reads each with `.item()`). Plain options only: no maximize,
    capturable, differentiable or foreach=False (ValueError, also from a loaded state), no complex weights; with
    any of those `fastest_optimizer` gives torch's Adamax."""

    UNSUPPORTED = ("maximize", "capturable", "differentiable")

    def __init__(self, params, **options):
        if any(options.get(key) for key in self.UNSUPPORTED) or options.get("foreach") is False:
            raise ValueError("InPlaceAdamax takes no maximize, capturable, differentiable or foreach=False option")
        options.pop("foreach", None)
        super().__init__(params, foreach=True, **options)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if any(group.get(key) for key in self.UNSUPPORTED):
                raise ValueError(f"InPlaceAdamax takes none of {self.UNSUPPORTED}; this group sets one")
            params, grads, exp_avgs, exp_infs, steps = [], [], [], [], []
            if self._init_group(group, params, grads, exp_avgs, exp_infs, steps):
                raise ValueError("InPlaceAdamax takes real weights only")
            if not params:
                continue
            beta1, beta2 = group["betas"]
            lr, eps, decay = float(group["lr"]), group["eps"], group["weight_decay"]
            tensors = torch.optim.Optimizer._group_tensors_by_device_and_dtype([params, grads, exp_avgs, exp_infs,
                                                                                  steps])
            for (params_, grads_, exp_avgs_, exp_infs_, steps_), _ in tensors.values():
                torch._foreach_add_(steps_, torch.tensor(1.0, device=steps_[0].device), alpha=1.0)
                if decay:
                    torch._foreach_add_(grads_, params_, alpha=decay)
                torch._foreach_lerp_(exp_avgs_, grads_, 1 - beta1)
                torch._foreach_mul_(exp_infs_, beta2)
                torch._foreach_abs_(grads_)
                torch._foreach_add_(grads_, eps)
                torch._foreach_maximum_(exp_infs_, grads_)
                counts = torch.stack(steps_).tolist()
                sizes = [-lr / (1 - beta1**count) for count in counts]
                torch._foreach_addcdiv_(params_, exp_avgs_, exp_infs_, sizes[0] if len(set(counts)) == 1 else sizes)
        return loss


def fastest_optimizer(kind: type[torch.optim.Optimizer], params, **options) -> torch.optim.Optimizer:
    """kind(params, **options) with the fastest update we have for it on the parameters' device: fused (one
    kernel over every parameter: Adam and AdamW on CPU and CUDA from torch 2.4; on the digits model's CPU step
    AdamW 2.8 → 1.1 ms), else for Adamax (torch has no fused one) `InPlaceAdamax`, multi-tensor (foreach) in its
    gradients; else torch's multi-tensor update (on a CPU, where torch's default is one tensor at a time, about a
    fifth less time). Each computes the same update, to float32 rounding."""
    params = list(params)
    if kind is torch.optim.Adamax and not any(options.get(key) for key in InPlaceAdamax.UNSUPPORTED) \
            and options.get("foreach") is not False:
        return InPlaceAdamax(params, **options)
    try:
        return kind(params, **{"fused": True, **options})
    except (TypeError, RuntimeError):  # no fused kernel for this optimizer, device or torch version
        return kind(params, **{"foreach": True, **options})


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: FitConfig) -> torch.optim.Optimizer:
    """Adamax (NVAE's choice) or Adam (L2 weight decay: the gradient gains weight_decay * w), or AdamW (decoupled
    weight decay: w shrinks by lr * weight_decay * w each step), through `fastest_optimizer` (Adamax: `InPlaceAdamax`,
    whose step consumes the gradients)."""
    kinds = {"adamax": torch.optim.Adamax, "adamw": torch.optim.AdamW, "adam": torch.optim.Adam}
    if cfg.optimizer not in kinds:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose one of {sorted(kinds)}")
    return fastest_optimizer(kinds[cfg.optimizer], params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group to ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def training_loss(vae: NVAE, x: torch.Tensor, kl_weight: float, cfg: FitConfig, regularisers: float = 1.0) -> dict:
    """The VAE-alone loss of a batch: vae.loss (warmed-up, balanced KL) + r·(lambda_SR * L_SR + lambda_BN * L_BN).
    Returns vae.loss's terms with 'loss' replaced by the regularised scalar, plus 'spectral' and 'norm'.

    `regularisers` (r) weighs the two per-step terms of the weights, which do not depend on the batch: a step split
    into A micro-batches whose losses are summed with weight 1/A passes A to the first and 0 to the rest (0 skips
    them, and the spectral estimate's power iteration with them), so that they count once a step, as in one batch."""
    terms = vae.loss(x, kl_weight=kl_weight, kl_balance=cfg.kl_balance)
    if regularisers:
        terms["spectral"] = vae.spectral_norm_loss(cfg.sn_iterations)
        terms["norm"] = vae.norm_loss()
        terms["loss"] = terms["loss"] + regularisers * (cfg.spectral_weight * terms["spectral"]
                                                        + cfg.norm_weight * terms["norm"])
    return terms
