"""What keeps a training run sane: its numbers checked before any work, each update checked before it is kept.

- `check_train_config`: every count of the `train` group positive (or zero where zero means "none"), refused with
  one line naming the key, before data or models are touched.
- `UpdateGuard`: an optimizer step whose relative size ‖θ_new − θ_old‖ / ‖θ_old‖ exceeds `max_update_ratio` is
  undone (the weights, not the optimizer's moments); a finite but exploding learning rate shows up exactly so.
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


class UpdateGuard:
    """Takes a copy of some parameters before an optimizer step and undoes the step if it moved them by more than
    `max_update_ratio` of their norm (None: no limit, no copy)."""

    def __init__(self, parameters: list[torch.Tensor], max_update_ratio: float | None):
        self.parameters, self.max_update_ratio = parameters, max_update_ratio
        self.before: list[torch.Tensor] | None = None

    @torch.no_grad()
    def __enter__(self) -> UpdateGuard:
        if self.max_update_ratio is not None:
            self.before = [p.detach().clone() for p in self.parameters]
        return self

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
        self.before = None


@torch.no_grad()
def weights_healthy(parameters, max_weight: float) -> tuple[bool, float]:
    """(every weight finite and |w| ≤ max_weight, the largest |w|)."""
    maxima = [p.detach().abs().max() for p in parameters if p.numel()]
    largest = torch.stack(maxima).max().item() if maxima else 0.0  # NaN anywhere makes it NaN
    return math.isfinite(largest) and largest <= max_weight, largest
