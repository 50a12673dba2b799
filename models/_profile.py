"""Parameter and multiply-accumulate (MAC) counting.

MACs follow the convention of the MobileNet/EfficientNet/ResNet papers: convolutions and fully
connected layers only (one MAC = one multiply + one add); BatchNorm, activations, pooling,
element-wise adds and SE gating multiplies are not counted. Counts are per image.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class ModelCost:
    params: int
    macs: int  # per image
    input_size: tuple[int, int, int]

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _conv_macs(m: nn.Conv2d, out: torch.Tensor) -> int:
    kh, kw = m.kernel_size
    per_output = (m.in_channels // m.groups) * kh * kw
    return out[0].numel() * per_output


def _linear_macs(m: nn.Linear, out: torch.Tensor) -> int:
    return out[0].numel() * m.in_features


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int, int] | int = 224) -> int:
    """MACs for one image of shape ``input_size`` (C, H, W) or a square side with 3 channels."""
    if isinstance(input_size, int):
        input_size = (3, input_size, input_size)
    total = 0

    def hook(m: nn.Module, _inp, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += _conv_macs(m, out)
        elif isinstance(m, nn.Linear):
            total += _linear_macs(m, out)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        model(torch.zeros(1, *input_size, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


def model_cost(model: nn.Module, input_size: tuple[int, int, int] | int = 224) -> ModelCost:
    if isinstance(input_size, int):
        input_size = (3, input_size, input_size)
    return ModelCost(count_params(model), count_macs(model, input_size), tuple(input_size))
