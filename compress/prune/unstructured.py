"""Unstructured magnitude pruning (Han et al. 2015, "Deep Compression" stage 1): zero the
smallest-magnitude weights of the conv and linear layers, hold them at zero while fine-tuning,
and raise the sparsity gradually with Zhu & Gupta's (2017) automated gradual pruning (AGP).

Masks live beside the model (a dict of boolean tensors) and are re-applied by multiplying the
weights after every optimizer step, so no ``weight_orig``/``weight_mask`` reparametrisation ever
reaches the saved artifact: the zeros are stored as ordinary weights and survive save/load.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn

from ..errors import UserError
from .structured import protected_layers


def prunable_weights(model: nn.Module, ignored_layers: Iterable[str | nn.Module] = ()) -> dict[str, nn.Parameter]:
    """``{layer name: weight}`` of every Conv2d/Linear except the classifier and ``ignored_layers``."""
    skip = {id(m) for layer in protected_layers(model, ignored_layers) for m in layer.modules()}
    return {name: m.weight for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in skip}


def agp_sparsity(step: int, total_steps: int, final: float, initial: float = 0.0) -> float:
    """Zhu & Gupta's schedule: s_t = s_f + (s_i - s_f) * (1 - t/n)^3, with t clipped to [0, n]."""
    if total_steps <= 0:
        return float(final)
    t = min(max(step, 0), total_steps)
    return float(final + (initial - final) * (1.0 - t / total_steps) ** 3)


# no @torch.no_grad(): every tensor here is detached; and mutmut (make mutation) skips decorated functions
def magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float, *,
                    global_scope: bool = False) -> dict[str, torch.Tensor]:
    """Boolean keep-masks removing the ``sparsity`` fraction of smallest |w|, per tensor or across
    all tensors together (``global_scope``). Exactly ``round(sparsity * n)`` weights are removed
    per scope (ties broken by position)."""
    if not 0.0 <= sparsity < 1.0:
        raise UserError(f"sparsity must satisfy 0 <= s < 1, got {sparsity}")

    def keep_top(scores: torch.Tensor) -> torch.Tensor:
        n_drop = int(round(sparsity * scores.numel()))
        keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
        if n_drop > 0:
            keep[torch.topk(scores, n_drop, largest=False, sorted=False).indices] = False
        return keep

    if not global_scope:
        return {name: keep_top(w.detach().abs().flatten()).view_as(w) for name, w in weights.items()}
    flat = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    keep = keep_top(flat)
    masks, offset = {}, 0
    for name, w in weights.items():
        masks[name] = keep[offset:offset + w.numel()].view_as(w)
        offset += w.numel()
    return masks


class WeightMasks:
    """Keep-masks over named weights; calling it (``after_step(model)``) zeroes the masked weights."""

    def __init__(self, weights: dict[str, nn.Parameter], masks: dict[str, torch.Tensor]):
        self.weights = weights
        self.masks = masks

    @torch.no_grad()
    def apply(self) -> None:
        for name, mask in self.masks.items():
            self.weights[name].mul_(mask)

    def __call__(self, model: nn.Module | None = None) -> None:
        self.apply()


def prune_magnitude(model: nn.Module, sparsity: float, *, global_scope: bool = False,
                    ignored_layers: Iterable[str | nn.Module] = ()) -> WeightMasks:
    """One-shot magnitude pruning in place; returns the masks to hold during fine-tuning."""
    weights = prunable_weights(model, ignored_layers)
    masks = WeightMasks(weights, magnitude_masks(weights, sparsity, global_scope=global_scope))
    masks.apply()
    return masks


class GradualMagnitudePruner:
    """AGP as an ``after_step`` callback for :func:`compress.train.fit`.

    Sparsity rises from ``initial`` to ``final`` over ``total_steps`` optimizer steps, the masks
    being recomputed every ``frequency`` steps (Zhu & Gupta's Δt) and re-applied after every step
    (so momentum cannot regrow pruned weights). Past ``total_steps`` the masks stay fixed at
    ``final``. Already-zero weights have the smallest magnitude, so pruned weights stay pruned."""

    def __init__(self, model: nn.Module, final: float, total_steps: int, *, initial: float = 0.0,
                 frequency: int | None = None, global_scope: bool = False,
                 ignored_layers: Iterable[str | nn.Module] = ()):
        if not 0.0 <= initial <= final < 1.0:
            raise UserError(f"need 0 <= initial <= final < 1, got initial={initial}, final={final}")
        self.final, self.initial = float(final), float(initial)
        self.total_steps = max(1, int(total_steps))
        self.frequency = max(1, int(frequency or self.total_steps // 10 or 1))
        self.global_scope = global_scope
        self.weights = prunable_weights(model, ignored_layers)
        self.step_count = 0
        self.current = 0.0
        self.masks = self._masks_at(self.initial)
        self.masks.apply()

    def _masks_at(self, sparsity: float) -> WeightMasks:
        self.current = sparsity
        return WeightMasks(self.weights, magnitude_masks(self.weights, sparsity, global_scope=self.global_scope))

    def __call__(self, model: nn.Module | None = None) -> None:
        self.step_count += 1
        if self.step_count <= self.total_steps and (
                self.step_count % self.frequency == 0 or self.step_count == self.total_steps):
            self.masks = self._masks_at(agp_sparsity(self.step_count, self.total_steps, self.final, self.initial))
        self.masks.apply()

    def finish(self) -> WeightMasks:
        """Force the final sparsity (e.g. when training stopped early) and return the fixed masks."""
        self.masks = self._masks_at(self.final)
        self.masks.apply()
        return self.masks


# no @torch.no_grad(): comparisons build no graph; and mutmut (make mutation) skips decorated functions
def sparsity_report(model: nn.Module, ignored_layers: Iterable[str | nn.Module] = ()) -> dict:
    """Zero fractions: per prunable layer, over all prunable weights ("global"), over every parameter
    ("overall")."""
    weights = prunable_weights(model, ignored_layers)
    layers = {}
    zeros_total = n_total = 0
    for name, w in weights.items():
        zeros, n = int((w == 0).sum()), w.numel()
        layers[name] = {"params": n, "zeros": zeros, "sparsity": zeros / n if n else 0.0}
        zeros_total += zeros
        n_total += n
    all_zeros = sum(int((p == 0).sum()) for p in model.parameters())
    all_n = sum(p.numel() for p in model.parameters())
    return {"layers": layers, "global": zeros_total / max(n_total, 1), "prunable_params": n_total,
            "overall": all_zeros / max(all_n, 1), "params": all_n}
