"""Per-layer ratios for a MAC budget, from the sensitivity analysis (``prune --ratio R --allocate
sensitivity``).

A uniform ratio takes the same share of every channel group, although groups differ twice over:
in what losing channels costs in accuracy (the sensitivity analysis measures it, each group pruned
alone) and in what it saves in MACs at the size the model will run at (a group in a 112x112 stage
of a 224-px network saves far more than one in a 7x7 stage). The allocation spends the uniform
ratio's MAC saving where accuracy is cheapest: starting from nothing pruned, it repeatedly moves
the one group whose next analysed ratio (or any larger one) saves the most MACs per point of
accuracy lost, until the MACs removed reach the uniform ratio's. Drops are treated as additive and
a drop below ``min_drop`` as ``min_drop`` (measurement noise would otherwise make a free lunch of
any group whose accuracy went up). MAC savings are exact per group (each group pruned alone on a
copy, MACs counted); groups interact (a projection loses input and output channels), so the
caller checks the joint result and asks for the shortfall again (:func:`allocate_ratios` takes
the target to reach).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn


@dataclass(frozen=True)
class Option:
    """One analysed setting of one group: its ratio, accuracy drop (points) and MACs saved."""

    ratio: float
    drop: float
    saved: float


def allocate_ratios(options: Mapping[str, Sequence[Option]], target: float, *, min_drop: float = 0.01,
                    start: Mapping[str, float] | None = None) -> dict[str, float]:
    """Per-group ratios (``0.0`` for untouched groups) whose summed savings reach ``target``, or
    every group at its largest ratio if they cannot. ``start`` resumes from earlier ratios (they
    only grow). Greedy on MACs saved per point lost, over jumps to any larger analysed ratio, then
    each group steps back to its least costly ratio that still meets the target."""
    floor = {g: 0.0 for g in options}
    floor.update({g: r for g, r in (start or {}).items() if g in floor})
    state = dict(floor)

    def current(g: str) -> Option:
        return option_at(g, state[g])

    def option_at(g: str, ratio: float) -> Option:
        return next((o for o in options[g] if o.ratio == ratio), Option(0.0, 0.0, 0.0))

    def saved() -> float:
        return sum(current(g).saved for g in options)

    while saved() < target:
        best, best_key = None, None
        for g, opts in options.items():
            now = current(g)
            for o in opts:
                if o.ratio <= now.ratio or o.saved <= now.saved:
                    continue
                key = ((o.saved - now.saved) / max(o.drop - now.drop, min_drop), o.saved - now.saved)
                if best_key is None or key > best_key:
                    best, best_key = (g, o.ratio), key
        if best is None:
            break
        state[best[0]] = best[1]
    # the last moves may overshoot: step back wherever the target still holds, dearest group first
    changed = saved() >= target
    while changed:
        changed = False
        for g in sorted(options, key=lambda g: -current(g).drop):
            now = current(g)
            lower = [o for o in [option_at(g, floor[g]), *options[g]]
                     if floor[g] <= o.ratio < now.ratio and saved() - now.saved + o.saved >= target]
            if lower:
                pick = min(lower, key=lambda o: (o.drop, -o.saved))
                if pick.drop < now.drop:
                    state[g], changed = pick.ratio, True
    return state


def group_savings(model: nn.Module, example: torch.Tensor, groups: Iterable[str], ratios: Sequence[float],
                  prune: Callable[[nn.Module, torch.Tensor, Mapping[str, float]], None],
                  count: Callable[[nn.Module], float]) -> dict[tuple[str, float], float]:
    """MACs saved by pruning each group alone at each ratio: ``prune(copy, example, {group: r})``
    on a fresh copy of ``model``, then ``count(copy)`` against ``count(model)``."""
    full = count(model)
    out = {}
    for g in groups:
        for r in ratios:
            m = copy.deepcopy(model)
            prune(m, example, {g: r})
            out[(g, r)] = full - count(m)
    return out
