"""Precise BatchNorm (Wu & Johnson, 2021): BatchNorm statistics re-estimated under the current
weights before each validation."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset

from ..torch_utils import model_mode


def recalibrate_batchnorm(model: nn.Module, dataset, num_samples: int, batch_size: int = 256,
                          device: torch.device | str = "cpu", seed: int = 0) -> None:
    """Replace every BN layer's running mean/var by the plain average over ``num_samples``
    un-augmented training images under the current weights.

    The exponential running averages lag behind weights that change quickly (early epochs, high
    learning rates), which can leave an eval-mode network at chance while it trains well; the
    validation metric, early stopping and the saved model all use the recalibrated statistics.
    Dropout and stochastic depth stay off during the pass. ``num_samples`` 0 does nothing."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns or num_samples <= 0 or len(dataset) == 0:
        return
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(dataset), generator=g)[:num_samples].tolist()
    loader = DataLoader(Subset(dataset, idx), batch_size=batch_size, shuffle=False)
    momenta = [bn.momentum for bn in bns]
    with model_mode(model, training=False):
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the pass
            bn.train()
        try:
            with torch.no_grad():
                for x, _ in loader:
                    model(x.to(device))
        finally:
            for bn, mom in zip(bns, momenta):
                bn.momentum = mom
