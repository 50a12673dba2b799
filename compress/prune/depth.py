"""Depth pruning: whole residual blocks out (``x + f(x)`` becomes ``x``).

Width pruning thins every layer but keeps every operator, and on a CPU at batch 1 the per-operator
cost and the high-resolution early layers set a floor that narrower channels cannot cross.
Removing a block removes its operators. Which blocks: each removable block is taken out alone and
the model's outputs on validation images compared with the intact model's; the blocks whose
removal changes the outputs least go first (:func:`rank_blocks`). The change is the mean KL
divergence of the predicted distributions (per-label Bernoulli KL for multi-label models): unlike
the accuracy drop it does not tie when a few hundred images are all still classified right.
The removal itself, and rebuilding a depth-pruned network from its artifact, is the model zoo's
(:func:`models.remove_blocks`, ``create_model(..., removed_blocks=[...])``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import remove_blocks, residual_blocks


@dataclass
class BlockTrial:
    """The model with ``block`` removed alone: its accuracy, the drop from the intact model's
    (fraction, not points) and the mean KL divergence of its outputs from the intact model's."""

    block: str
    accuracy: float
    drop: float
    divergence: float

    def to_dict(self) -> dict:
        return {"block": self.block, "accuracy": self.accuracy, "drop": self.drop, "divergence": self.divergence}


@torch.no_grad()
def _outputs(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x) for x, _ in batches]).float()


def _accuracy(logits: torch.Tensor, targets: torch.Tensor, task: str) -> float:
    if task == "multiclass":
        return float((logits.argmax(1) == targets).float().mean())
    return float(((logits > 0) == (targets > 0.5)).float().mean())  # per-label decisions


def divergence(reference: torch.Tensor, logits: torch.Tensor, task: str) -> float:
    """Mean KL(reference || logits) per image, over classes (multiclass) or summed over labels
    of Bernoulli KLs (multilabel)."""
    if task == "multiclass":
        kl = F.kl_div(F.log_softmax(logits, 1), F.log_softmax(reference, 1), log_target=True, reduction="batchmean")
    else:
        p, lq, lp = torch.sigmoid(reference), F.logsigmoid(logits), F.logsigmoid(reference)
        lq1, lp1 = F.logsigmoid(-logits), F.logsigmoid(-reference)
        kl = (p * (lp - lq) + (1 - p) * (lp1 - lq1)).sum(1).mean()
    return max(0.0, float(kl))  # rounding can give -1e-9 for equal outputs


def rank_blocks(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], task: str,
                progress: Callable[[str], None] | None = None) -> tuple[float, list[BlockTrial]]:
    """(the intact model's accuracy, one trial per removable block, least output change first;
    ties keep forward order)."""
    batches = list(batches)
    targets = torch.cat([y for _, y in batches])
    reference = _outputs(model, batches)
    baseline = _accuracy(reference, targets, task)
    trials = []
    for i, name in enumerate(residual_blocks(model)):
        logits = _outputs(remove_blocks(copy.deepcopy(model), [name]), batches)
        acc = _accuracy(logits, targets, task)
        trials.append(BlockTrial(name, acc, baseline - acc, divergence(reference, logits, task)))
        if progress:
            progress(f"  block {i + 1}: {name} out -> accuracy {acc:.4f}, KL {trials[-1].divergence:.4g}")
    return baseline, sorted(trials, key=lambda t: t.divergence)  # stable: forward order on ties


def choose_blocks(trials: list[BlockTrial], count: int) -> list[str]:
    """The ``count`` cheapest blocks of a ranking (all of them when there are fewer)."""
    return [t.block for t in trials[:count]]
