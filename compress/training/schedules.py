"""Learning-rate schedules as multipliers of the base rate, evaluated per optimizer step.

``lr(step) = base_lr * factor(step)``. A linear warm-up over ``warmup_steps`` rises from
``1 / (warmup_steps + 1)`` to 1; the schedule proper then runs over the remaining steps, with
``t`` going from 0 to 1:

    constant   1
    step       gamma ** floor(epoch / step_epochs)                  (epochs counted after warm-up)
    cosine     min_factor + (1 - min_factor) * (1 + cos(pi t)) / 2
    htd        min_factor + (1 - min_factor) * (1 - tanh(L + (U - L) t)) / 2
               hyperbolic-tangent decay (Hsueh et al., 2019), default L = -6, U = 3

With ``hold_after`` the factor is ``hold_factor`` from that step on: the constant rate of the
weight-averaged epochs (``--swa-epochs``), after a schedule that ran over the steps before.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:  # torch is imported where a scheduler is built, so the CLI starts fast
    import torch

SCHEDULES = ("constant", "step", "cosine", "htd")


@dataclass(frozen=True)
class Schedule:
    """A per-step learning-rate multiplier (see module docstring)."""

    name: str
    total_steps: int
    warmup_steps: int = 0
    steps_per_epoch: int = 1
    min_factor: float = 0.0
    step_epochs: int = 30
    gamma: float = 0.1
    htd_lower: float = -6.0
    htd_upper: float = 3.0
    hold_after: int | None = None  # from this step on the factor is ``hold_factor`` (weight averaging)
    hold_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise UserError(f"unknown schedule {self.name!r}; choose one of {', '.join(SCHEDULES)}")
        if self.total_steps < 1 or self.warmup_steps < 0 or self.steps_per_epoch < 1:
            raise UserError("schedule needs total_steps >= 1, warmup_steps >= 0, steps_per_epoch >= 1")
        if self.name == "step" and (self.step_epochs < 1 or not 0 < self.gamma <= 1):
            raise UserError(f"step schedule needs step epochs >= 1 and 0 < gamma <= 1, got {self.step_epochs}, {self.gamma}")
        if self.name == "htd" and self.htd_lower >= self.htd_upper:
            raise UserError(f"htd needs lower < upper, got {self.htd_lower}, {self.htd_upper}")

    def factor(self, step: int) -> float:
        if self.hold_after is not None and step >= self.hold_after:
            return self.hold_factor
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        span = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        lo = self.min_factor
        if self.name == "constant":
            return 1.0
        if self.name == "step":
            return self.gamma ** ((step - self.warmup_steps) // (self.step_epochs * self.steps_per_epoch))
        if self.name == "cosine":
            return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * t))
        # htd
        return lo + (1 - lo) * 0.5 * (1 - math.tanh(self.htd_lower + (self.htd_upper - self.htd_lower) * t))

    def scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        """A LambdaLR to ``step()`` after every optimizer step."""
        import torch

        return torch.optim.lr_scheduler.LambdaLR(optimizer, self.factor)
