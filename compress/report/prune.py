"""The prune stage's results as terminal tables."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .tables import format_table, human_bytes, human_count

if TYPE_CHECKING:  # pragma: no cover
    from ..prune.api import PruneResult, SensitivityResult

_COUNTS = ("params", "nonzero_params", "macs", "macs_at_bench_size")


def _cell(key: str, v: Any) -> Any:
    if v is None:
        return None
    if key in _COUNTS:
        return human_count(v)
    if key == "file_bytes":
        return human_bytes(v)
    if key in ("top1", "map"):
        return f"{100 * v:.2f}%"
    if key == "latency_ms":
        return f"{v:.3f}"
    return v


def _change(key: str, before: Any, after: Any) -> str | None:
    if not (isinstance(before, (int, float)) and isinstance(after, (int, float))):
        return None
    if key in ("top1", "map"):
        return f"{100 * (after - before):+.2f} pt"
    return f"{after / before:.3f}x" if before and key != "loss" else None


def format_prune(result: "PruneResult") -> str:
    """Before / after / change per measured quantity, then the per-layer sparsity and the ratio
    search where there are any."""
    bench = result.bench or {}
    size = bench.get("input_size")
    stem = ", ImageNet stem" if bench.get("imagenet_stem") else ""
    labels = {"params": "params", "nonzero_params": "non-zero params", "macs": "MACs", "file_bytes": "file size",
              "top1": "test top-1", "map": "test mAP", "loss": "test loss",
              "latency_ms": f"ORT latency ms (b1, 2 thr, {size}px{stem})", "macs_at_bench_size": f"MACs @{size}px{stem}"}
    b, a = result.before, result.after
    rows = [{"": label, "before": _cell(k, b.get(k)), "after": _cell(k, a.get(k)), "change": _change(k, b.get(k), a.get(k))}
            for k, label in labels.items() if k in b or k in a]
    parts = [format_table(rows, ["", "before", "after", "change"])]
    if "sparsity" in result.extra:
        s = result.extra["sparsity"]
        parts.append(format_table([{"layer": n, "sparsity": f"{100 * v:.1f}%"} for n, v in s["layers"].items()],
                                  ["layer", "sparsity"]))
        parts.append(f"sparsity: {100 * s['global']:.2f}% of prunable weights, {100 * s['overall']:.2f}% of all "
                     f"parameters")
    epochs = result.params.get("finetune_epochs")
    if epochs:
        crit = result.params.get("criterion")
        how = (f"distilled from the unpruned model (loss {crit.get('loss')}, T={crit.get('temperature')}; teacher "
               f"logits {crit.get('teacher_logits', 'computed every step')}; --no-distill for labels only)") if crit \
            else "labels only (no distillation)"
        parts.append(f"fine-tuned {epochs} epoch(s): {how}")
    if "depth" in result.extra:
        d = result.extra["depth"]
        if d.get("trials"):
            removed = set(d["removed"])
            parts.append(format_table([{"block": t["block"], "KL alone out": f"{t['divergence']:.4g}",
                                        "accuracy alone out": f"{100 * t['accuracy']:.2f}%",
                                        "removed": "yes" if t["block"] in removed else ""} for t in d["trials"]],
                                      ["block", "KL alone out", "accuracy alone out", "removed"]))
            parts.append(f"blocks ranked by {d['chosen_by']}; intact: {100 * d['baseline']:.2f}%")
        parts.append(f"depth pruning: {len(d['removed'])} residual block(s) out: {', '.join(d['removed'])}")
    if "search" in result.extra:
        s = result.extra["search"]
        parts.append(f"ratio search: {s['measure']} target {s['target']:g} -> ratio {s['ratio']:.3f} "
                     f"({s['measure']} {s['cost']:.4g}, {'reached' if s['reached'] else 'NOT reached'})")
    return "\n".join(parts)


def format_sensitivity(result: "SensitivityResult") -> str:
    """One row per layer group: the drop (points) at each ratio tried and the ratio chosen."""
    table: dict[str, dict[str, Any]] = {}
    for r in result.rows:
        entry = table.setdefault(r.layer, {"layer": r.layer, "channels": r.channels})
        entry[f"drop@{r.ratio:g}"] = round(r.drop, 2)
    for name, entry in table.items():
        entry["chosen"] = result.ratios.get(name, 0.0)
    return (f"baseline val {result.metric}: {100 * result.baseline:.2f}%  (drop in points when one group is pruned "
            f"alone)\n" + format_table(list(table.values())))
