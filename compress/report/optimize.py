"""The tables and the plot of ``compress optimize``: every variant (frontier marked, chosen
starred), the skipped candidates, and accuracy against latency or size with the frontier drawn."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .tables import format_table, human_bytes

if TYPE_CHECKING:  # pragma: no cover
    from ..optimize.api import OptimizeResult


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def format_optimize(result: "OptimizeResult") -> str:
    cost = "latency_ms" if result.objective == "latency" else "bytes"
    front = {v["id"] for v in result.frontier}
    chosen = result.chosen["id"] if result.chosen else None
    b = result.baseline
    rows: list[dict[str, Any]] = []
    if cost == "latency_ms":
        rows.append({"variant": "input (ORT fp32)", "threads": b.get("threads"), "latency ms": f"{b['latency_ms']:.3f}",
                     "speed-up": "1.00x", "val acc": _pct(b["val_accuracy"]), "drop pt": "0.00",
                     "test acc": _pct(b.get("test_accuracy"))})
        for v in sorted(result.variants, key=lambda v: v["latency_ms"]):
            rows.append({"variant": v["id"].rsplit("/", 1)[0], "threads": v["threads"],
                         "latency ms": f"{v['latency_ms']:.3f}", "speed-up": f"{v['speedup']:.2f}x",
                         "val acc": _pct(v["val_accuracy"]), "drop pt": f"{v['drop_points']:.2f}",
                         "test acc": _pct(v.get("test_accuracy")),
                         "": ("* chosen" if v["id"] == chosen else "") + (" frontier" if v["id"] in front else "")})
        columns = ["variant", "threads", "latency ms", "speed-up", "val acc", "drop pt", "test acc", ""]
    else:
        rows.append({"variant": "input (fp32 file)", "size": human_bytes(b["bytes"]), "smaller": "1.0x",
                     "val acc": _pct(b["val_accuracy"]), "drop pt": "0.00", "test acc": _pct(b.get("test_accuracy"))})
        for v in sorted(result.variants, key=lambda v: v["bytes"]):
            rows.append({"variant": v["id"], "size": human_bytes(v["bytes"]), "smaller": f"{v['ratio']:.1f}x",
                         "val acc": _pct(v["val_accuracy"]), "drop pt": f"{v['drop_points']:.2f}",
                         "test acc": _pct(v.get("test_accuracy")),
                         "": ("* chosen" if v["id"] == chosen else "") + (" frontier" if v["id"] in front else "")})
        columns = ["variant", "size", "smaller", "val acc", "drop pt", "test acc", ""]
    parts = [format_table(rows, columns)]
    if result.skipped:
        parts.append("not built: " + "; ".join(f"{s['id']} ({s['why']})" for s in result.skipped))
    budget = result.config.get("max_drop")
    if result.chosen is None:
        parts.append(f"no variant is within {budget:g} points of the input's validation accuracy")
    else:
        c = result.chosen
        what = (f"{c['speedup']:.2f}x faster than ONNX Runtime fp32 of the input ({c['latency_ms']:.3f} vs "
                f"{b['latency_ms']:.3f} ms)" if cost == "latency_ms" else
                f"{c['ratio']:.1f}x smaller than the input file ({human_bytes(c['bytes'])})")
        parts.append(f"chosen: {c['id']}: {what}; validation {c['drop_points']:+.2f} pt (budget {budget:g}), "
                     f"test {_pct(c.get('test_accuracy'))} vs {_pct(b.get('test_accuracy'))}")
    t = result.timing
    if t:
        parts.append(f"latency: median of {t['runs']} interleaved runs, batch {t['batch']}, {t['input_size']}px"
                     f"{' (ImageNet stem)' if t['imagenet_stem'] else ''}, threads {t['threads']} each timed")
    parts.append(f"{len(result.candidates)} candidate(s) measured in {result.seconds / 60:.1f} min"
                 + (" (stopped by --budget-minutes; run again to go on)" if result.stopped_by_budget else ""))
    return "\n".join(parts)


def plot_frontier(result: "OptimizeResult", path: str | os.PathLike, cost: str) -> Path | None:
    """Validation accuracy vs latency (ms) or size (bytes, log scale): every variant, the frontier
    as a line, the input and the chosen variant marked."""
    from .plots import _pyplot, _save

    pts = [v for v in result.variants if v.get(cost) is not None]
    if not pts:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"fp32": "tab:blue", "int8": "tab:orange", None: "tab:green"}
    for prec in dict.fromkeys(v.get("precision") for v in pts):
        sel = [v for v in pts if v.get("precision") == prec]
        ax.scatter([v[cost] for v in sel], [100 * v["val_accuracy"] for v in sel], s=22, alpha=0.7,
                   color=colors.get(prec, "tab:gray"), label=prec or "variants")
    front = result.frontier
    ax.plot([v[cost] for v in front], [100 * v["val_accuracy"] for v in front], "-", color="black", lw=1,
            label="Pareto frontier")
    b = result.baseline
    if b.get(cost) is not None:
        ax.scatter([b[cost]], [100 * b["val_accuracy"]], marker="s", s=50, color="black", label="input")
    if result.chosen:
        c = result.chosen
        ax.scatter([c[cost]], [100 * c["val_accuracy"]], marker="*", s=200, color="red", label=f"chosen: {c['id']}")
    ax.axhline(100 * b["val_accuracy"] - result.config.get("max_drop", 0), color="red", ls=":", lw=1,
               label="accuracy budget")
    if cost == "bytes":
        ax.set_xscale("log")
    ax.set_xlabel("latency (ms, fastest thread count)" if cost == "latency_ms" else "file size (bytes)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"compress optimize --objective {result.objective}")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path, 110)
