"""The bench report as a person reads it: two terminal tables, and the JSON, CSV and PNG files."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .tables import format_table, human_bytes, human_count, pct, ratio

if TYPE_CHECKING:  # pragma: no cover
    from ..bench.api import BenchReport


def format_report(report: "BenchReport") -> str:
    """Two terminal tables: the variants (engine, precision, size, params, MACs, accuracy) and the
    latency cells."""
    from ..sysinfo import describe_machine

    static_rows = []
    for v in report.variants:
        row = {"model": v["model"], "engine": v["engine"], "precision": v.get("precision"),
               "size": human_bytes(v["file_bytes"]), "x size": ratio(v["size_ratio"]),
               "params": human_count(v["params"]) if v["params"] is not None else None,
               "MACs": human_count(v["macs"]) if v["macs"] is not None else None, "input": v["input"]}
        if any(x["stored_bytes"] is not None for x in report.variants):
            row["stored"] = human_bytes(v["stored_bytes"]) if v["stored_bytes"] is not None else None
        if report.config.get("data"):
            row["acc"] = pct(v["accuracy"])
            row["agree"] = pct(v["agreement"])
        static_rows.append(row)
    cell_rows = []
    for r in report.results:
        cell_rows.append({"model": r["model"], "engine": r["engine"], "batch": r["batch"], "thr": r["threads"],
                          "p50 ms": round(r["p50_ms"], 2), "p90 ms": round(r["p90_ms"], 2),
                          "p99 ms": round(r["p99_ms"], 2), "IQR ms": round(r["iqr_ms"], 2),
                          "img/s": round(r["throughput"], 1), "speedup": ratio(r["speedup"]),
                          "GMAC/s": round(r["gmacs_per_s"], 2) if r["gmacs_per_s"] else None, "runs": r["runs"]})
    parts = [f"machine: {describe_machine(report.machine)}", "", format_table(static_rows), "",
             format_table(cell_rows),
             "", "speedup = baseline p50 / p50 (baseline: first model, same batch and threads); "
                 "img/s at the median latency"]
    parts += [f"warning: {w}" for w in report.warnings]
    return "\n".join(parts)


def format_comparison(report: dict) -> str:
    """One line per variant (a bench report's JSON dict): coded size and the ratio to the baseline,
    accuracy and agreement, p50 latency and speed-up at each batch size (the most threads timed)."""
    threads = max(r["threads"] for r in report["results"]) if report["results"] else None
    cells = {(r["model"], r["batch"]): r for r in report["results"] if r["threads"] == threads}
    batches = sorted({b for _m, b in cells})
    base = report["variants"][0]
    base_bytes = base["stored_bytes"] or base["file_bytes"]
    rows = []
    for v in report["variants"]:
        size = v["stored_bytes"] or v["file_bytes"]
        row = {"model": v["model"], "precision": v.get("precision"), "size": human_bytes(size),
               "x smaller": ratio(base_bytes / size) if size else None}
        if report["config"].get("data"):
            row.update({"acc": pct(v["accuracy"]), "agree": pct(v["agreement"])})
        for b in batches:
            cell = cells.get((v["model"], b))
            row[f"p50 ms b{b}"] = round(cell["p50_ms"], 2) if cell else None
            row[f"speedup b{b}"] = ratio(cell["speedup"]) if cell else None
        rows.append(row)
    return format_table(rows) + f"\n(ratios to {base['model']}; {threads} thread(s); size = the coded size of a .dcz)"


CSV_COLUMNS = ("model", "engine", "precision", "batch", "threads", "input", "runs", "p50_ms", "p90_ms", "p99_ms",
               "mean_ms", "std_ms", "iqr_ms", "min_ms", "max_ms", "throughput", "speedup", "latency_ratio",
               "gmacs_per_s", "file_bytes", "stored_bytes", "size_ratio", "params", "params_ratio", "macs",
               "macs_ratio", "accuracy", "agreement")


def report_paths(prefix: str | os.PathLike, *, plot: bool = True) -> list[Path]:
    """The files :func:`write_report` writes for ``prefix``: .json, .csv and, with ``plot``, .png."""
    prefix = Path(prefix)
    return [prefix.with_name(prefix.name + s) for s in (".json", ".csv", ".png")[:3 if plot else 2]]


def write_report(report: "BenchReport", prefix: str | os.PathLike, *, plot: bool = True) -> list[Path]:
    """Write ``prefix``.json, ``prefix``.csv and (with ``plot``) ``prefix``.png; return the paths."""
    from ..io import atomic_path, write_json
    from .plots import plot_bench

    written = report_paths(prefix, plot=plot)
    json_path, csv_path = written[:2]
    json_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(json_path, report.to_dict())
    static = {v["model"]: v for v in report.variants}
    with atomic_path(csv_path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
            w.writeheader()
            for r in report.results:
                s = static[r["model"]]
                w.writerow({**{k: s.get(k) for k in CSV_COLUMNS if k in s}, **r})
    if plot:
        plot_bench(report, written[2])
    return written
