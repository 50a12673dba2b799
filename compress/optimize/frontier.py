"""The Pareto frontier of (cost, accuracy) points and the choice within an accuracy budget; pure
Python, no torch."""
from __future__ import annotations

from typing import Any, Sequence


def pareto(points: Sequence[dict[str, Any]], cost: str, accuracy: str = "val_accuracy") -> list[dict[str, Any]]:
    """The points no other point beats: none has lower-or-equal cost and higher-or-equal accuracy
    with one of them strictly better. Sorted by cost. Points whose cost or accuracy is None are left out."""
    ok = [p for p in points if p.get(cost) is not None and p.get(accuracy) is not None]
    front = []
    for p in ok:
        dominated = any(q[cost] <= p[cost] and q[accuracy] >= p[accuracy]
                        and (q[cost] < p[cost] or q[accuracy] > p[accuracy]) for q in ok)
        if not dominated:
            front.append(p)
    return sorted(front, key=lambda p: (p[cost], -p[accuracy]))


def choose(points: Sequence[dict[str, Any]], cost: str, baseline: float, max_drop_points: float,
           accuracy: str = "val_accuracy") -> dict[str, Any] | None:
    """The cheapest point whose accuracy is at most ``max_drop_points`` below ``baseline``
    (accuracies are fractions, the budget in points); among equal costs the most accurate."""
    within = [p for p in points if p.get(cost) is not None and p.get(accuracy) is not None
              and 100 * (baseline - p[accuracy]) <= max_drop_points + 1e-9]
    return min(within, key=lambda p: (p[cost], -p[accuracy])) if within else None
