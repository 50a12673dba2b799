"""Stochastic weight averaging (Izmailov et al., 2018): an equal-weight running average of the
network's weights at the end of several epochs at a constant learning rate, which lands nearer the
middle of the flat region SGD circles around than any single iterate.

:func:`~compress.training.loop.fit` folds the weights in after each averaged epoch
(``--swa-epochs``), validates the average (precise BatchNorm re-estimates its statistics, which an
average of running statistics would not give) and goes on training the iterate.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class WeightAverage:
    """The running mean of a model's floating-point state (parameters and BatchNorm buffers);
    integer buffers (BatchNorm's batch counter) are left to the model."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: dict[str, torch.Tensor] = {}

    def add(self, model: nn.Module) -> None:
        self.count += 1
        with torch.no_grad():
            for name, value in model.state_dict().items():
                if not value.is_floating_point():
                    continue
                value = value.detach().float()
                if name not in self.mean:
                    self.mean[name] = value.clone()
                else:
                    self.mean[name] += (value - self.mean[name]) / self.count

    def swap_in(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Load the average into ``model``; return the weights it held (to load back afterwards)."""
        if not self.count:
            raise RuntimeError("nothing averaged yet")
        held = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.mean, strict=False)
        return held
