"""Find the smallest channel ratio whose pruned model meets a cost target (MACs or latency), by
bisection on copies of the model. Cost falls as the ratio grows (monotone up to measurement
noise for latency), so bisection on [0, max_ratio] converges in a handful of trials."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn


@dataclass
class RatioSearch:
    ratio: float                 # chosen channel ratio
    cost: float                  # measured cost at that ratio
    target: float
    reached: bool                # cost <= target
    trials: list[dict] = field(default_factory=list)  # {"ratio", "cost"} in evaluation order


def search_ratio(model: nn.Module, prune: Callable[[nn.Module, float], nn.Module],
                 measure: Callable[[nn.Module], float], target: float, *, max_ratio: float = 0.9,
                 tolerance: float = 0.01, max_trials: int = 10,
                 progress: Callable[[str], None] | None = None) -> RatioSearch:
    """Bisect the ratio in (0, ``max_ratio``] until ``measure(prune(copy, ratio)) <= target`` with
    the ratio known to within ``tolerance``. ``prune(model, ratio)`` prunes in place and returns
    the model; ``model`` itself is not modified. When even ``max_ratio`` misses the target the
    result has ``reached=False`` and ``ratio=max_ratio``."""
    trials: list[dict] = []

    def cost_at(ratio: float) -> float:
        trial = prune(copy.deepcopy(model), ratio)
        cost = float(measure(trial))
        trials.append({"ratio": round(ratio, 4), "cost": cost})
        if progress is not None:
            progress(f"ratio {ratio:.3f}: cost {cost:.4g} (target {target:.4g})")
        return cost

    base = float(measure(model))
    if base <= target:
        return RatioSearch(0.0, base, target, True, [{"ratio": 0.0, "cost": base}])
    hi_cost = cost_at(max_ratio)
    if hi_cost > target:
        return RatioSearch(max_ratio, hi_cost, target, False, trials)
    lo, hi = 0.0, max_ratio
    while hi - lo > tolerance and len(trials) < max_trials:
        mid = (lo + hi) / 2
        c = cost_at(mid)
        if c <= target:
            hi, hi_cost = mid, c
        else:
            lo = mid
    return RatioSearch(hi, hi_cost, target, True, trials)
