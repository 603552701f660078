"""Exponential moving average of parameters, swappable into the model for evaluation."""

from __future__ import annotations

from contextlib import contextmanager

import torch


class EMA:
    """θ_ema ← d θ_ema + (1 − d) θ after each update, with d = min(decay, (1 + n)/(10 + n)) after n updates
    (a warm-up so the average is not dominated by the initial weights in short runs)."""

    def __init__(self, named_parameters, decay: float = 0.9999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.parameters = dict(named_parameters)
        self.decay = decay
        self.updates = 0
        self.shadow = {name: p.detach().clone() for name, p in self.parameters.items()}

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(list(self.shadow.values()), [p.detach() for p in self.parameters.values()], 1 - decay)

    @contextmanager
    def applied(self):
        """Inside the block the parameters hold the EMA weights; afterwards the trained ones again."""
        backup = {name: p.detach().clone() for name, p in self.parameters.items()}
        self.copy_to_parameters()
        try:
            yield
        finally:
            with torch.no_grad():
                for name, parameter in self.parameters.items():
                    parameter.copy_(backup[name])

    @torch.no_grad()
    def copy_to_parameters(self) -> None:
        """The parameters take the EMA weights (for good; `applied` does it for a block)."""
        for name, parameter in self.parameters.items():
            parameter.copy_(self.shadow[name])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = state["decay"], state["updates"]
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)
