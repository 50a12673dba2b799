"""Every plot the toolkit draws (matplotlib, Agg backend, written atomically as PNG)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from ..bench.api import BenchReport
    from ..prune.sensitivity import SensitivityRow


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike, dpi: int) -> Path:
    """Write ``fig`` as a PNG through :func:`compress.io.atomic_path` and close it."""
    from ..io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    _pyplot().close(fig)
    return path


def plot_bench(report: "BenchReport", path: str | os.PathLike) -> Path:
    """Median latency per image vs accuracy (or MACs, without --data) and vs file size. Colour =
    model, marker = (batch, threads) cell."""
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, NullFormatter

    static = {v["model"]: v for v in report.variants}
    have_acc = any(v["accuracy"] is not None for v in report.variants)
    y1_key, y1_label = ("accuracy", "accuracy, test split (%)") if have_acc else ("macs", "MACs per image")
    cells = sorted({(r["batch"], r["threads"]) for r in report.results})
    names = [v["model"] for v in report.variants]
    colors = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(names)}
    markers = {c: "osD^v<>ph*"[i % 10] for i, c in enumerate(cells)}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, (key, label) in zip(axes, ((y1_key, y1_label), ("file_bytes", "file size (MiB)"))):
        for r in report.results:
            y = static[r["model"]].get(key)
            if y is None:
                continue
            y = y / 2 ** 20 if key == "file_bytes" else (100 * y if key == "accuracy" else y)
            ax.scatter(r["p50_ms"] / r["batch"], y, color=colors[r["model"]],
                       marker=markers[(r["batch"], r["threads"])], s=40, alpha=0.85)
        ax.set_xlabel("median latency per image (ms)")
        ax.set_ylabel(label)
        per_image = [r["p50_ms"] / r["batch"] for r in report.results]
        if per_image and max(per_image) / max(min(per_image), 1e-9) > 20:
            ax.set_xscale("log")
            # plain numbers on the log axis; matplotlib's default minor labels overlap
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, alpha=0.3)
        for r in report.results:  # name each point: a legend alone makes readers match colours
            y = static[r["model"]].get(key)
            if y is not None and len(cells) == 1:
                y = y / 2 ** 20 if key == "file_bytes" else (100 * y if key == "accuracy" else y)
                ax.annotate(r["model"], (r["p50_ms"] / r["batch"], y), textcoords="offset points",
                            xytext=(5, 4), fontsize=7)
    model_handles = [Line2D([], [], color=colors[n], marker="o", linestyle="", label=n) for n in names]
    cell_handles = [Line2D([], [], color="black", marker=markers[c], linestyle="", fillstyle="none",
                           label=f"batch {c[0]}, {c[1]} thr")
                    for c in cells]
    fig.legend(handles=model_handles + cell_handles, loc="upper center", ncol=min(6, len(names) + len(cells)),
               fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.94))
    fig.suptitle("compress bench — " + report.machine.get("cpu", ""), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.88))
    return _save(fig, path, dpi=110)


def plot_sensitivity(baseline: float, rows: Sequence["SensitivityRow"], path, *, metric_name: str = "top1",
                     scale: float = 100.0) -> Path:
    """A PNG: metric vs ratio, one line per layer group."""
    plt = _pyplot()
    by_layer: dict[str, list] = {}
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
    return _save(fig, path, dpi=100)


def plot_accuracy_vs(points: Sequence[tuple[str, float, float]], path: str | os.PathLike, *, xlabel: str,
                     ylabel: str = "accuracy (%)", title: str = "", log_x: bool = False,
                     log_base: int = 10, x_format: Callable[[float], str] | None = None) -> Path:
    """A PNG: one named point per model, (x, accuracy in %) — x a cost such as the median latency
    in ms or the size in bytes. ``log_x``: a log axis ticked at the powers of ``log_base`` (and at
    2 and 5 times them in base 10), labelled by ``x_format`` (default: plain numbers)."""
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    cmap = plt.get_cmap("tab10")
    for i, (name, x, y) in enumerate(points):
        ax.scatter(x, y, color=cmap(i % 10), s=45, zorder=3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if log_x:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=log_base, subs=(1.0, 2.0, 5.0) if log_base == 10 else (1.0,)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: x_format(v) if x_format else f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ys = [y for _, _, y in points]
    pad = max(0.5, (max(ys) - min(ys)) * 0.15)
    ax.set_ylim(min(ys) - pad, max(ys) + pad)
    ax.margins(x=0.15)
    if not log_x:
        ax.set_xlim(left=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _save(fig, path, dpi=100)


def plot_per_layer(series: dict[str, dict[str, float]], path: str | os.PathLike, *, ylabel: str,
                   title: str = "") -> Path:
    """A PNG of grouped bars: one group per layer, one bar per series (e.g. per stage); layers in
    the order of the series that names the most of them."""
    plt = _pyplot()
    # the longest series sets the order (the others may list a subset, or list it backwards)
    longest = max(series.values(), key=len, default={})
    layers = list(dict.fromkeys([*longest, *(name for values in series.values() for name in values)]))
    n = max(len(series), 1)
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(min(20.0, max(7.5, 0.22 * len(layers) * n + 2)), 5.2))
    cmap = plt.get_cmap("tab10")
    for k, (label, values) in enumerate(series.items()):
        xs = [i + (k - (n - 1) / 2) * width for i, name in enumerate(layers) if name in values]
        ax.bar(xs, [values[name] for name in layers if name in values], width=width, color=cmap(k % 10),
               label=label)
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(layers, rotation=90, fontsize=6 if len(layers) > 30 else 7)
    ax.set_xlim(-0.6, len(layers) - 0.4)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return _save(fig, path, dpi=100)
