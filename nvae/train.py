"""Stage 1: train the VAE alone. The pieces (schedules, the regularised loss, the optimiser, evaluation,
checkpointing) are separate functions so that the joint LSGM trainer reuses them; ``fit`` is the loop.

Schedules take the run's *progress* p in [0, 1], p = max(step / max_steps, elapsed / max_seconds), so a
time-budgeted run still completes its KL warm-up and cosine decay.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field

import torch

from nvae.model import NVAE, nats_to_bpd


@dataclass
class FitConfig:
    """Settings of ``fit``; fractions (``lr_warmup``, ``kl_warmup``) are of the run's progress."""

    max_steps: int = 20_000
    max_seconds: float | None = None
    optimizer: str = "adamax"  # 'adamax' (NVAE) or 'adamw'
    lr: float = 1e-2
    min_lr: float = 1e-4
    weight_decay: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    lr_warmup: float = 0.02
    kl_warmup: float = 0.3
    kl_min_weight: float = 1e-4
    kl_balance: bool = True
    spectral_weight: float = 1e-3
    norm_weight: float = 1e-3
    sn_iterations: int = 1
    grad_clip: float | None = 200.0
    eval_every: int = 250
    val_k: int = 1
    patience: int | None = None  # evaluations without a new best before stopping early
    restore_best: bool = True
    checkpoint_path: str | None = None


@dataclass
class FitResult:
    """What ``fit`` did: steps taken (and skipped as non-finite), time, the best validation bpd and its
    step, and one record per evaluation."""

    steps: int
    seconds: float
    skipped_steps: int
    best_val_bpd: float | None
    best_step: int | None
    history: list[dict] = field(default_factory=list)


def progress(step: int, elapsed: float, max_steps: int, max_seconds: float | None) -> float:
    """p = max(step / max_steps, elapsed / max_seconds), clipped to [0, 1]."""
    p = step / max_steps
    if max_seconds:
        p = max(p, elapsed / max_seconds)
    return min(p, 1.0)


def kl_warmup_weight(p: float, warmup: float, min_weight: float = 1e-4) -> float:
    """beta(p) = max(min(p / warmup, 1), min_weight): NVAE's linear KL warm-up (1 when warmup = 0)."""
    if warmup <= 0:
        return 1.0
    return max(min(p / warmup, 1.0), min_weight)


def warmup_cosine_lr(p: float, lr: float, min_lr: float, warmup: float) -> float:
    """lr(p) = lr * p / warmup for p < warmup, then min_lr + (lr - min_lr)(1 + cos(pi q)) / 2 with
    q = (p - warmup) / (1 - warmup)."""
    if p < warmup:
        return lr * max(p, 1e-3) / warmup
    q = (p - warmup) / max(1.0 - warmup, 1e-12)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * min(q, 1.0)))


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: FitConfig) -> torch.optim.Optimizer:
    """Adamax (NVAE's choice, L2 weight decay) or AdamW (decoupled weight decay)."""
    kinds = {"adamax": torch.optim.Adamax, "adamw": torch.optim.AdamW}
    if cfg.optimizer not in kinds:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose one of {sorted(kinds)}")
    return kinds[cfg.optimizer](params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def training_loss(vae: NVAE, x: torch.Tensor, kl_weight: float, cfg: FitConfig) -> dict:
    """The VAE-alone loss of a batch: vae.loss (warmed-up, balanced KL) + lambda_SR * L_SR + lambda_BN * L_BN.
    Returns vae.loss's terms with 'loss' replaced by the regularised scalar, plus 'spectral' and 'norm'."""
    terms = vae.loss(x, kl_weight=kl_weight, kl_balance=cfg.kl_balance)
    terms["spectral"] = vae.spectral_norm_loss(cfg.sn_iterations)
    terms["norm"] = vae.norm_loss()
    terms["loss"] = terms["loss"] + cfg.spectral_weight * terms["spectral"] + cfg.norm_weight * terms["norm"]
    return terms


def backward_and_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                      params: Iterable[torch.nn.Parameter], grad_clip: float | None) -> bool:
    """Backpropagate ``loss``, clip the global gradient norm to ``grad_clip`` (None: no clipping) and
    step, unless the loss or the gradient norm is not finite (then the step is skipped: returns False)."""
    params = [p for p in params if p.requires_grad]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip is not None else math.inf)
    if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
        return False
    optimizer.step()
    return True


def _rng_devices(x: torch.Tensor) -> list[int]:
    return [x.device.index or 0] if x.is_cuda else []


@torch.no_grad()
def evaluate_bpd(vae: NVAE, x: torch.Tensor, k: int = 1, batch_size: int = 256, seed: int = 0) -> float:
    """Mean bits/dim of the importance-weighted bound with k samples (k = 1: the ELBO) over x, in eval
    mode and with a fixed seed, so successive evaluations of one model compare without sampling noise.
    The global RNG and the module's mode are left as they were."""
    was_training = vae.training
    vae.eval()
    with torch.random.fork_rng(devices=_rng_devices(x)):
        torch.manual_seed(seed)
        nats = torch.cat([vae.nll(xb, k) for xb in x.split(batch_size)])
    vae.train(was_training)
    return nats_to_bpd(nats.mean(), vae.num_dims).item()


def batches(x: torch.Tensor, batch_size: int, seed: int = 0) -> Iterator[torch.Tensor]:
    """Endless shuffled mini-batches of x (each epoch a new permutation, last partial batch dropped)."""
    if batch_size > x.shape[0]:
        raise ValueError(f"batch_size {batch_size} exceeds the {x.shape[0]} training images")
    generator = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
        for i in range(0, x.shape[0] - batch_size + 1, batch_size):
            yield x[perm[i:i + batch_size]]


def save_checkpoint(path: str, state: dict) -> None:
    """torch.save to a temporary file, then os.replace: a crash never leaves a half-written checkpoint."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def fit(vae: NVAE, data: Iterable[torch.Tensor], cfg: FitConfig, val_x: torch.Tensor | None = None,
        callback: Callable[[dict], None] | None = None) -> FitResult:
    """Train the VAE alone on batches from ``data`` (tensors, or tuples whose first entry is the images)
    until ``max_steps`` or ``max_seconds``: KL warm-up, warm-up + cosine LR, spectral and norm
    regularisation, gradient clipping; a step whose loss or gradient is not finite is skipped.
    Every ``eval_every`` steps (from step 0, and at the end) the validation bpd (IWAE with ``val_k``
    samples) is measured; the best model is kept (and written to ``checkpoint_path``), restored at the
    end when ``restore_best``, and ``patience`` evaluations without improvement stop the run early.
    ``callback`` receives each evaluation record."""
    optimizer = make_optimizer(vae.parameters(), cfg)
    result = FitResult(0, 0.0, 0, None, None)
    best_state, stale, last = None, 0, {}
    start = time.perf_counter()
    stream = iter(data)
    vae.train()
    while True:
        elapsed = time.perf_counter() - start
        p = progress(result.steps, elapsed, cfg.max_steps, cfg.max_seconds)
        done = p >= 1.0
        if val_x is not None and (done or result.steps % cfg.eval_every == 0):
            val_bpd = evaluate_bpd(vae, val_x, cfg.val_k)
            record = {"step": result.steps, "seconds": elapsed, "val_bpd": val_bpd, **last}
            result.history.append(record)
            if callback is not None:
                callback(record)
            if result.best_val_bpd is None or val_bpd < result.best_val_bpd:
                result.best_val_bpd, result.best_step, stale = val_bpd, result.steps, 0
                best_state = copy.deepcopy(vae.state_dict())
                if cfg.checkpoint_path:
                    save_checkpoint(cfg.checkpoint_path, {"model": best_state, "step": result.steps,
                                                          "val_bpd": val_bpd, "fit_config": asdict(cfg)})
            else:
                stale += 1
                done = done or (cfg.patience is not None and stale >= cfg.patience)
        if done:
            break
        batch = next(stream)
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        kl_weight = kl_warmup_weight(p, cfg.kl_warmup, cfg.kl_min_weight)
        set_lr(optimizer, warmup_cosine_lr(p, cfg.lr, cfg.min_lr, cfg.lr_warmup))
        terms = training_loss(vae, x, kl_weight, cfg)
        if not backward_and_step(terms["loss"], optimizer, vae.parameters(), cfg.grad_clip):
            result.skipped_steps += 1
        result.steps += 1
        last = {"loss": terms["loss"].item(), "train_bpd": terms["bpd"].mean().item(), "kl_weight": kl_weight}
    result.seconds = time.perf_counter() - start
    if cfg.restore_best and best_state is not None:
        vae.load_state_dict(best_state)
    return result
