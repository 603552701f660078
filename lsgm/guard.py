"""What keeps a training run sane: its numbers checked before any work, each update checked before it is kept.

- `check_train_config`: every count of the `train` group positive (or zero where zero means "none"), refused with
  one line naming the key, before data or models are touched.
- `UpdateGuard`: an optimizer step whose relative size ‖θ_new − θ_old‖ / ‖θ_old‖ exceeds `max_update_ratio` is
  undone (the weights, not the optimizer's moments); a finite but exploding learning rate shows up exactly so.
  Where the optimizer's own bound (`update_bound`) proves the step cannot exceed the limit, the guard spends at most
  one norm of the weights (most steps none: it carries a lower bound of it) instead of a copy of them and two norms
  after the step.
- the trainer's loss-spike check: a finite loss above `max_loss_ratio` times the running mean of its kept steps is
  skipped like a non-finite one.
- `weights_healthy`: every weight finite and no larger in magnitude than `max_weight`; a checkpoint is only
  written from healthy weights.
- `TrainingDiverged`: raised after `max_skipped_steps` consecutive skipped or undone updates, or when a checkpoint
  would hold unhealthy weights or a non-finite validation bound.
"""

from __future__ import annotations

import math

import torch

from nvae.train import InPlaceAdamax

from .objective import SCORE_TARGETS

POSITIVE_KEYS = ("steps", "batch_size", "log_every", "eval_every", "sample_every", "checkpoint_every",
                 "eval_repeats", "num_samples")


class TrainingDiverged(RuntimeError):
    """The run cannot continue: its updates keep failing, or its weights or validation bound are not finite."""


def check_train_config(train) -> None:
    """Raise ValueError naming the first bad key of the `train` group (see the module docstring)."""
    for key in POSITIVE_KEYS:
        value = train.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"train.{key} must be a positive integer, got {value!r}")
    stage1 = train.get("stage1_steps", 0)
    if not isinstance(stage1, int) or not 0 <= stage1 <= train.steps:
        raise ValueError(f"train.stage1_steps must be an integer in 0..train.steps ({train.steps}), got {stage1!r}")
    for key in ("lr_vae", "lr_score"):
        value = train.get(key)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"train.{key} must be a positive number, got {value!r}")
    accumulate = train.get("accumulate", 1)
    if not isinstance(accumulate, int) or isinstance(accumulate, bool) or accumulate <= 0:
        raise ValueError(f"train.accumulate must be a positive integer (micro-batches a step), got {accumulate!r}")
    if train.get("score_target", "noise") not in SCORE_TARGETS:
        raise ValueError(f"train.score_target must be one of {list(SCORE_TARGETS)}, got {train.get('score_target')!r}")
    skipped = train.get("max_skipped_steps", 1)
    if not isinstance(skipped, int) or skipped <= 0:
        raise ValueError(f"train.max_skipped_steps must be a positive integer, got {skipped!r}")


def _host_steps(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> list[int] | None:
    """The step count t each parameter's next step takes (1 before its first; the counts differ between weights
    where some had no gradient on some steps), read in one go; None where a count lives on a device (fused or
    capturable on CUDA), since reading it would wait for the device."""
    counts = [optimizer.state.get(p, {}).get("step", 0) for p in params]
    tensors = [count for count in counts if torch.is_tensor(count)]
    values = []
    if tensors:
        try:
            stacked = torch.stack(tensors)
        except RuntimeError:  # counts on several devices
            return None
        if stacked.device.type != "cpu":
            return None
        values = stacked.tolist()
        if len(values) == len(counts):
            return [int(value) + 1 for value in values]
    values = iter(values)
    return [int(next(values) if torch.is_tensor(count) else count) + 1 for count in counts]


def _step_bound(adamax: bool, lr: float, beta1: float, beta2: float, step: int) -> float:
    """The largest |Δθ| of one weight at step count t (`update_bound`'s two lines), without the decoupled decay."""
    if adamax:
        return lr / (1 - beta1**step) * (1 - beta1) / (1 - beta1 / beta2)
    return lr * (1 - beta1) / (1 - beta1**step) * math.sqrt((1 - beta2**step) / ((1 - beta2) * (1 - beta1**2 / beta2)))


def update_bound(optimizer: torch.optim.Optimizer) -> tuple[float, float] | None:
    """(a, c) with ‖θ_new − θ_old‖ ≤ a + c‖θ_old‖ for the optimizer's next step, whatever the gradients, from its
    hyperparameters and each weight's step count t alone; None for an optimizer without a known bound. Per weight:

        Adamax       |Δθ| = lr/(1 − β1^t) · |m_t|/u_t ≤ lr/(1 − β1^t) · (1 − β1)/(1 − β1/β2)           (β1 < β2)

    since u_t ≥ β2^k(|g_{t−k}| + eps) for every past gradient of m_t = (1 − β1) Σ_k β1^k g_{t−k};

        Adam(W)      |Δθ| ≤ lr · |m̂_t|/√v̂_t (+ lr λ|θ|: AdamW's decoupled decay)
                          ≤ lr · (1 − β1)/(1 − β1^t) · √((1 − β2^t)/((1 − β2)(1 − β1²/β2)))           (β1² < β2)

    by Cauchy–Schwarz of m_t against v_t = (1 − β2) Σ_k β2^k g²_{t−k} (AMSGrad's larger v only lowers it; eps too).
    With n_p weights in tensor p at its own count t_p, a = √(Σ_p n_p |Δθ|²(t_p)) and c = max_g lr_g λ_g (decoupled
    decay; 0 else). Assumes the moments were built with the current betas, as they are within a run.
    """
    kinds = (torch.optim.Adamax, torch.optim.Adam, torch.optim.AdamW, InPlaceAdamax)
    if type(optimizer) not in kinds:  # a subclass may change the update: only these are known
        return None
    squared, decay = 0.0, 0.0
    for group in optimizer.param_groups:
        params = group["params"]
        steps = _host_steps(optimizer, params)
        if steps is None:
            return None
        lr, (beta1, beta2) = float(group["lr"]), group["betas"]
        adamax = isinstance(optimizer, torch.optim.Adamax)
        if not (beta1 < beta2 if adamax else beta1**2 < beta2):
            return None
        if not adamax and (isinstance(optimizer, torch.optim.AdamW) or group.get("decoupled_weight_decay")):
            decay = max(decay, lr * group["weight_decay"])
        weights_at: dict[int, int] = {}
        for p, step in zip(params, steps):
            weights_at[step] = weights_at.get(step, 0) + p.numel()
        squared += sum(count * _step_bound(adamax, lr, beta1, beta2, step) ** 2 for step, count in weights_at.items())
    return math.sqrt(squared), decay


class UpdateGuard:
    """Undoes an optimizer step that moved some parameters by more than `max_update_ratio` = r of their norm (None: no
    limit). Before the step it takes a copy of them, unless the optimizer's `update_bound` (a, c) proves the step
    within the limit (`certified`: then the step is kept unchecked): a + c‖θ‖ ≤ r‖θ‖, i.e. a ≤ (r − c)‖θ‖.

    One guard serves a run's steps of one optimizer. ‖θ‖ is measured when needed and then carried as a lower bound
    L: after a certified step ‖θ_new‖ ≥ ‖θ‖ − (a + c‖θ‖) ≥ (1 − c)L − a (c ≤ 1), valid while nothing else has
    written the weights, which their version counters tell: autograd's in-place operations bump them (copy_,
    load_state_dict, an EMA swap, an undo, torch's foreach optimizers), writes through `.data` and fused optimizer
    kernels do not. In a run the only such writes are the guarded step itself (the score model's fused AdamW,
    bounded by a) and `distributed.broadcast_module` before the first step; a new writer of that kind must call
    `forget()`. A step whose a ≤ (r − c)L needs no norm at all; with the default limit the norm is taken every
    ~15–30 steps of the VAE's Adamax instead of every step.
    """

    def __init__(self, parameters: list[torch.Tensor], max_update_ratio: float | None,
                 optimizer: torch.optim.Optimizer | None = None):
        self.parameters, self.max_update_ratio, self.optimizer = parameters, max_update_ratio, optimizer
        self.before: list[torch.Tensor] | None = None
        self.certified = False
        self.floor: float | None = None  # a lower bound on ‖θ‖ while the weights' versions are `versions`
        self.versions: list[int] | None = None
        self.norms_taken = 0

    def forget(self) -> None:
        """Drop the carried bound of ‖θ‖ (the weights were written where their version counters do not show it)."""
        self.floor, self.versions = None, None

    def _versions(self) -> list[int]:
        return [p._version for p in self.parameters]

    @torch.no_grad()
    def __enter__(self) -> UpdateGuard:
        if self.max_update_ratio is None:
            return self
        bound = update_bound(self.optimizer) if self.optimizer is not None else None
        if bound is not None:
            a, c = bound
            margin = self.max_update_ratio - c
            if self.floor is None or a > margin * self.floor or self._versions() != self.versions:
                self.floor = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(
                    [p.detach() for p in self.parameters]))))
                self.norms_taken += 1
            self.certified = a <= margin * self.floor
            self.floor = (1 - c) * self.floor - a if self.certified and c <= 1 else None
        if not self.certified:
            self.before = [p.detach().clone() for p in self.parameters]
        return self

    def exceeded(self) -> bool:
        """Whether the step moved the parameters by more than the limit (False without one, or when certified)."""
        return self.before is not None and bool(self.ratio() > self.max_update_ratio)

    @torch.no_grad()
    def ratio(self) -> torch.Tensor:
        """‖θ_new − θ_old‖ / ‖θ_old‖ over all the parameters (0-d; 0 without a copy)."""
        if self.before is None:
            return torch.zeros(())
        change = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(torch._foreach_sub(self.parameters,
                                                                                             self.before))))
        size = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(self.before)))
        return change / size.clamp(min=1e-12)

    @torch.no_grad()
    def undo(self) -> None:
        torch._foreach_copy_(self.parameters, self.before)

    def __exit__(self, *exception) -> None:
        if self.certified and exception[0] is None:
            self.versions = self._versions()
        else:
            self.forget()
        self.before, self.certified = None, False


@torch.no_grad()
def weights_healthy(parameters, max_weight: float) -> tuple[bool, float]:
    """(every weight finite and |w| ≤ max_weight, the largest |w|)."""
    maxima = [p.detach().abs().max() for p in parameters if p.numel()]
    largest = torch.stack(maxima).max().item() if maxima else 0.0  # NaN anywhere makes it NaN
    return math.isfinite(largest) and largest <= max_weight, largest
