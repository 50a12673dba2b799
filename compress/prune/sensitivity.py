"""Per-layer pruning sensitivity: prune one channel group alone at several ratios, measure the
metric, and report the drop, so per-layer ratios can be chosen (Li et al. 2017, section 3.3).

Each trial is simulated without rebuilding the network: the channels torch-pruning would remove
from the group are zeroed in every coupled layer (output slices of the producing convs and
BatchNorms, input slices of every consumer), which gives the pruned network's outputs exactly
(consumers no longer see those channels), then the weights are restored. One dependency graph
serves all trials, so an analysis costs about one evaluation per (group, ratio).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp

from ..errors import UserError
from ..torch_utils import model_mode
from .structured import build_graph, iter_groups, round_channels


@dataclass
class SensitivityRow:
    layer: str       # root layer of the channel group (a key for a ratio file)
    channels: int    # channels of the group before pruning
    ratio: float     # requested ratio
    kept: int        # channels left after rounding
    metric: float    # evaluation metric (higher is better), e.g. top-1 in [0, 1]
    drop: float      # baseline - metric, in points (percentage points for accuracies)

    def to_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def zeroed_group(graph: tp.DependencyGraph, group) -> Iterator[None]:
    """Inside the block, the channels of ``group`` are zeroed in every layer of it (output slices
    of producers and BatchNorms, input slices of consumers), which gives the pruned network's
    outputs exactly; on leaving, every touched tensor is restored bit for bit.

    A tensor can appear in a group more than once (a depthwise conv is both producer and
    consumer): each is saved once, before its first change, so the restore is exact whatever
    the order of the group's entries."""
    yield from _zeroed_group(graph, group)


def _zeroed_group(graph: tp.DependencyGraph, group) -> Iterator[None]:
    # the body of zeroed_group, undecorated so that `make mutation` can mutate it (mutmut skips
    # decorated functions); exceptions and close() reach it through ``yield from``
    saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    try:
        for dep, idxs in group:
            module = dep.target.module
            if not isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)) or not len(idxs):
                continue
            idx = torch.as_tensor(sorted(idxs), dtype=torch.long)
            out_fn = graph.is_out_channel_pruning_fn(dep.handler)
            depthwise = isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels
            if isinstance(module, nn.BatchNorm2d) or out_fn or depthwise:
                params = [(module.weight, 0), (module.bias, 0)]
            else:  # a consumer: its input slice
                params = [(module.weight, 1)]
            for p, dim in params:
                if p is None:
                    continue
                saved.setdefault(id(p), (p, p.detach().clone()))
                p.data.index_fill_(dim, idx, 0.0)
        yield
    finally:
        with torch.no_grad():
            for p, orig in saved.values():
                p.copy_(orig)


def analyze_sensitivity(model: nn.Module, example_input: torch.Tensor, evaluate: Callable[[nn.Module], float],
                        *, ratios: Sequence[float] = (0.1, 0.3, 0.5, 0.7), importance: tp.importance.Importance,
                        round_to: int | None = 8, ignored_layers: Iterable[str | nn.Module] = (),
                        scale: float = 100.0, progress: Callable[[str], None] | None = None,
                        ) -> tuple[float, list[SensitivityRow]]:
    """(baseline metric, one row per (group, ratio)). ``evaluate(model)`` returns a metric where
    higher is better; drops are ``(baseline - metric) * scale`` (points for accuracies). The model
    is left exactly as it was."""
    for r in ratios:
        if not 0 < r < 1:
            raise UserError(f"sensitivity ratios must satisfy 0 < r < 1, got {r}")
    rows: list[SensitivityRow] = []
    with model_mode(model, training=False):
        graph = build_graph(model, example_input)
        names = {m: n for n, m in model.named_modules()}
        baseline = float(evaluate(model))
        for group in list(iter_groups(graph, model, ignored_layers)):
            root, handler = group[0].dep.target.module, group[0].dep.handler
            n = int(graph.get_out_channels(root))
            with torch.no_grad():
                scores = importance(group)
            if scores is None:
                continue
            order = torch.argsort(scores.cpu())
            for r in sorted(ratios):
                kept = round_channels(n - (n - int(n * (1 - r))), n, round_to or 0)
                n_drop = n - kept
                if n_drop <= 0:
                    metric = baseline
                else:
                    sub = graph.get_pruning_group(root, handler, order[:n_drop].tolist())
                    with zeroed_group(graph, sub):
                        metric = float(evaluate(model))
                rows.append(SensitivityRow(names[root], n, float(r), kept, metric, (baseline - metric) * scale))
                if progress is not None:
                    progress(f"{names[root]} ratio {r:g}: kept {kept}/{n}, metric {metric:.4f}")
    return baseline, rows


def choose_ratios(rows: Iterable[SensitivityRow], max_drop: float) -> dict[str, float]:
    """Per layer, the largest analysed ratio whose drop stays within ``max_drop`` points, and
    every smaller ratio did too (0.0 when even the smallest ratio costs more)."""
    by_layer: dict[str, list[SensitivityRow]] = {}
    for row in rows:
        by_layer.setdefault(row.layer, []).append(row)
    chosen = {}
    for layer, layer_rows in by_layer.items():
        best = 0.0
        for row in sorted(layer_rows, key=lambda r: r.ratio):
            if row.drop > max_drop or math.isnan(row.metric):
                break
            best = row.ratio
        chosen[layer] = best
    return chosen
