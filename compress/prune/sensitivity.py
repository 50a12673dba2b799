"""Per-layer pruning sensitivity: prune one channel group alone at several ratios, measure the
metric, and report the drop, so per-layer ratios can be chosen (Li et al. 2017, section 3.3).

Each trial is simulated without rebuilding the network: the channels torch-pruning would remove
from the group are zeroed in every coupled layer (output slices of the producing convs and
BatchNorms, input slices of every consumer), which gives the pruned network's outputs exactly
(consumers no longer see those channels), then the weights are restored. One dependency graph
serves all trials, so an analysis costs about one evaluation per (group, ratio).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp

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


def _zero_slices(graph: tp.DependencyGraph, group, saved: list) -> None:
    """Zero the channels of ``group`` in every layer of it, remembering the originals in ``saved``."""
    for dep, idxs in group:
        module = dep.target.module
        if not isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)) or not len(idxs):
            continue
        idx = torch.as_tensor(sorted(idxs), dtype=torch.long)
        out_fn = graph.is_out_channel_pruning_fn(dep.handler)
        depthwise = isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels
        params: list[tuple[torch.Tensor, int]] = []
        if isinstance(module, nn.BatchNorm2d) or out_fn or depthwise:
            params.append((module.weight, 0))
            if module.bias is not None:
                params.append((module.bias, 0))
        else:  # a consumer: its input slice
            params.append((module.weight, 1))
        for p, dim in params:
            if p is None:
                continue
            saved.append((p, p.detach().clone()))
            p.data.index_fill_(dim, idx, 0.0)


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
            raise ValueError(f"sensitivity ratios must satisfy 0 < r < 1, got {r}")
    was_training = model.training
    model.eval()
    graph = build_graph(model, example_input)
    names = {m: n for n, m in model.named_modules()}
    baseline = float(evaluate(model))
    rows: list[SensitivityRow] = []
    try:
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
                    saved: list = []
                    try:
                        _zero_slices(graph, sub, saved)
                        metric = float(evaluate(model))
                    finally:
                        with torch.no_grad():
                            for p, orig in saved:
                                p.copy_(orig)
                rows.append(SensitivityRow(names[root], n, float(r), kept, metric, (baseline - metric) * scale))
                if progress is not None:
                    progress(f"{names[root]} ratio {r:g}: kept {kept}/{n}, metric {metric:.4f}")
    finally:
        model.train(was_training)
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


def plot_sensitivity(baseline: float, rows: Sequence[SensitivityRow], path, *, metric_name: str = "top1",
                     scale: float = 100.0) -> None:
    """A PNG: metric vs ratio, one line per layer group (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_layer: dict[str, list[SensitivityRow]] = {}
    for row in rows:
        by_layer.setdefault(row.layer, []).append(row)
    fig, ax = plt.subplots(figsize=(9, 6), dpi=100)
    cmap = plt.get_cmap("viridis", max(len(by_layer), 2))
    for i, (layer, layer_rows) in enumerate(by_layer.items()):
        layer_rows = sorted(layer_rows, key=lambda r: r.ratio)
        ax.plot([0.0] + [r.ratio for r in layer_rows], [baseline * scale] + [r.metric * scale for r in layer_rows],
                marker="o", markersize=3, linewidth=1, color=cmap(i), label=layer)
    ax.axhline(baseline * scale, color="black", linestyle="--", linewidth=0.8)
    ax.set_xlabel("channel pruning ratio of the group (others unpruned)")
    ax.set_ylabel(f"{metric_name} ({'%' if scale == 100 else 'value'})")
    ax.set_title("Pruning sensitivity per layer group")
    if len(by_layer) <= 30:
        ax.legend(fontsize=6, ncol=2, loc="lower left")
    fig.tight_layout()
    fig.savefig(str(path), format="png")
    plt.close(fig)
