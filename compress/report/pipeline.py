"""The report of ``compress pipeline``: one self-contained HTML page (plots inlined as PNG data
URIs, no external resource of any kind) and its Markdown twin (plots as PNG files beside it).

Input: the pipeline's state (``OUT/pipeline.json``) and the JSON reports its stages left on disk.
Output: ``OUT/report.html``, ``OUT/report.md`` and ``OUT/report_files/*.png``; nothing else is
written. A report file that is missing or unreadable shows as "-", never as an error.

The variants table comes from the bench report when the pipeline has one: the first variant is
the baseline (the trained model); speed-up = baseline p50 / p50 at the same batch and threads;
compression = baseline file bytes / coded bytes (the .dcz size for a Huffman-coded file, else
the file size). Without a bench, the rows come from the stages' own reports and latency is
marked as not measured.
"""
from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .tables import human_bytes, human_count, pct, ratio

HTML_NAME = "report.html"
MD_NAME = "report.md"
FILES_DIR = "report_files"
MODEL_STAGES = ("train", "distill", "prune", "export", "quantize", "huffman")

Cell = tuple[int, int]  # (batch, threads)


# ----------------------------------------------------------------------------- reading the inputs

def _get(obj: Any, *keys: Any) -> Any:
    """``obj[k1][k2]...`` or None when any step is missing or of the wrong type."""
    for k in keys:
        if isinstance(obj, dict):
            obj = obj.get(k)
        elif isinstance(obj, list) and isinstance(k, int) and -len(obj) <= k < len(obj):
            obj = obj[k]
        else:
            return None
    return obj


def _num(v: Any) -> float | None:
    """``v`` when it is a finite number (JSON may carry NaN), else None."""
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def resolve_path(path: Any, out_dir: Path) -> Path | None:
    """An existing file named by the state: the path as given (relative to the current folder or
    absolute), else the same file name in ``out_dir`` (the run folder moved or the cwd differs)."""
    if not isinstance(path, str) or not path:
        return None
    p = Path(path)
    if p.is_file():
        return p
    alt = out_dir / p.name
    return alt if alt.is_file() else None


def load_json(path: Path | None) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when absent, unreadable or not an object."""
    if path is None:
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _file_size(path: Path | None) -> int | None:
    try:
        return path.stat().st_size if path is not None else None
    except OSError:
        return None


def _same_path(a: Any, b: Any) -> bool:
    """The same file: the same path once resolved, or one path ending with the other (a state
    written from another folder)."""
    if not (isinstance(a, str) and isinstance(b, str) and a and b):
        return False
    if Path(a).resolve() == Path(b).resolve():
        return True
    pa, pb = Path(a).parts, Path(b).parts
    n = min(len(pa), len(pb))
    return pa[-n:] == pb[-n:]


# ----------------------------------------------------------------------------- the model

@dataclass
class StageView:
    """One stage's record and what its report says."""

    name: str
    type: str
    mode: str | None
    status: str
    seconds: float | None
    output: str | None
    size: int | None
    command: str | None
    report: dict[str, Any] | None
    inputs: dict[str, Any] = field(default_factory=dict)  # role -> path(s), as the state records them

    @property
    def label(self) -> str:
        return f"{self.type} ({self.mode})" if self.mode else self.type


@dataclass
class Variant:
    """One row of the variants table. Latency in ms per forward pass of one batch."""

    name: str
    stage: str | None = None
    engine: str | None = None
    precision: str | None = None
    params: float | None = None
    macs: float | None = None
    file_bytes: int | None = None
    stored_bytes: int | None = None
    accuracy: float | None = None
    agreement: float | None = None
    latency: dict[Cell, tuple[float, float]] = field(default_factory=dict)  # (p50, p99)
    speedup: dict[Cell, float] = field(default_factory=dict)
    compression: float | None = None

    @property
    def coded_bytes(self) -> int | None:
        return self.stored_bytes if self.stored_bytes is not None else self.file_bytes


@dataclass
class PipelineView:
    """Everything the two renderings show, read once from the state and the reports."""

    state: dict[str, Any]
    bench: dict[str, Any] | None  # the bench report, when there is one
    stages: list[StageView]
    variants: list[Variant]
    cells: list[Cell]
    source: str  # where the variants table comes from
    latency_note: str | None  # why latency is missing (None when measured)
    metric: str
    ratios: dict[str, dict[str, float]]  # series -> layer -> pruned fraction
    bits: dict[str, dict[str, float]]  # series -> layer -> bits per weight

    @property
    def baseline(self) -> Variant | None:
        return self.variants[0] if self.variants else None

    @property
    def primary_cell(self) -> Cell | None:
        """The cell the headline and the latency plot use: the smallest batch, most threads."""
        if not self.cells:
            return None
        batch = min(b for b, _ in self.cells)
        return batch, max(t for b, t in self.cells if b == batch)


def stage_views(state: dict[str, Any], out_dir: Path) -> list[StageView]:
    views = []
    for rec in state.get("stages") or []:
        if not isinstance(rec, dict):
            continue
        out_path = resolve_path(rec.get("output"), out_dir)
        views.append(StageView(name=str(rec.get("name", "?")), type=str(rec.get("type", "?")), mode=rec.get("mode"),
                               status=str(rec.get("status", "?")), seconds=_num(rec.get("seconds")),
                               output=rec.get("output"), size=_file_size(out_path), command=rec.get("command"),
                               report=load_json(resolve_path(rec.get("report"), out_dir)),
                               inputs=rec.get("inputs") if isinstance(rec.get("inputs"), dict) else {}))
    return views


def _cells(results: list[dict]) -> list[Cell]:
    return sorted({(r["batch"], r["threads"]) for r in results
                   if isinstance(r.get("batch"), int) and isinstance(r.get("threads"), int)})


def _stage_of(path: Any, stages: list[StageView]) -> str | None:
    return next((s.name for s in stages if _same_path(path, s.output)), None)


def bench_variants(bench: dict[str, Any], stages: list[StageView]) -> tuple[list[Variant], list[Cell]]:
    """Rows from a bench report (``BenchReport.to_dict()``), the first being the baseline."""
    results = [r for r in bench.get("results") or [] if isinstance(r, dict)]
    variants = []
    for v in bench.get("variants") or []:
        if not isinstance(v, dict):
            continue
        row = Variant(name=str(v.get("model", "?")), stage=_stage_of(v.get("path"), stages), engine=v.get("engine"),
                      precision=v.get("precision"), params=_num(v.get("params")), macs=_num(v.get("macs")),
                      file_bytes=_num(v.get("file_bytes")), stored_bytes=_num(v.get("stored_bytes")),
                      accuracy=_num(v.get("accuracy")), agreement=_num(v.get("agreement")))
        for r in results:
            p50, p99 = _num(r.get("p50_ms")), _num(r.get("p99_ms"))
            if r.get("model") == row.name and p50 is not None:
                row.latency[(r.get("batch"), r.get("threads"))] = (p50, p99)
        variants.append(row)
    return variants, _cells(results)


def _first(*values: Any) -> float | None:
    return next((v for v in map(_num, values) if v is not None), None)


def _test_accuracy(stage: StageView) -> float | None:
    """The test accuracy a stage's report records for its output model."""
    rep, kind = stage.report, stage.type
    if kind in ("train", "distill"):
        return _first(_get(rep, "result", "test_scalars", "top1"), _get(rep, "result", "test_scalars", "map"))
    if kind == "prune":
        return _first(_get(rep, "after", "top1"), _get(rep, "after", "map"))
    if kind == "quantize" and stage.mode == "kmeans":
        return _first(_get(rep, "accuracy", "finetuned", "test"), _get(rep, "accuracy", "kmeans", "test"))
    if kind == "quantize":
        return _num(_get(rep, "int8_test_accuracy"))
    if kind == "huffman":
        return _num(_get(rep, "accuracy", "decoded", "test"))
    return None


def _params_macs(stage: StageView) -> tuple[float | None, float | None]:
    rep = stage.report
    for keys in (("model",), ("student",), ("after",)):
        if _num(_get(rep, *keys, "params")) is not None:
            return _num(_get(rep, *keys, "params")), _num(_get(rep, *keys, "macs"))
    return _num(_get(rep, "storage", "params")), None


ENGINES = {".onnx": "onnxruntime", ".safetensors": "pytorch", ".dcz": "pytorch"}  # by output suffix


def _stage_variant(s: StageView) -> Variant:
    params, macs = _params_macs(s)
    int8 = s.type == "quantize" and s.mode != "kmeans"
    coded = _first(_get(s.report, "sizes", "dcz_bytes"), s.size) if s.type == "huffman" else None
    return Variant(name=s.name, stage=s.name, engine=ENGINES.get(Path(s.output or "").suffix),
                   precision="int8" if int8 else "fp32", params=params, macs=macs, file_bytes=s.size,
                   stored_bytes=coded, accuracy=_test_accuracy(s),
                   agreement=_num(_get(s.report, "test_agreement")) if int8 else None)


def stage_variants(stages: list[StageView]) -> list[Variant]:
    """Rows built from the stages' own reports (no bench): sizes, params and test accuracy; an
    eval stage gives the accuracy of a model whose own report has none (an export)."""
    made = [s for s in stages if s.type in MODEL_STAGES]
    variants = [_stage_variant(s) for s in made]
    for ev in (s for s in stages if s.type == "eval"):
        acc = _first(_get(ev.report, "metrics", "top1"), _get(ev.report, "metrics", "map"))
        for s, v in zip(made, variants):
            if v.accuracy is None and acc is not None and _same_path(ev.inputs.get("model"), s.output):
                v.accuracy = acc
    return variants


def add_ratios(variants: list[Variant], cells: list[Cell]) -> None:
    """Speed-up per cell and compression against the first variant (the baseline)."""
    if not variants:
        return
    base = variants[0]
    for v in variants:
        for cell in cells:
            b, x = base.latency.get(cell), v.latency.get(cell)
            if b and x and x[0] > 0:
                v.speedup[cell] = b[0] / x[0]
        if base.file_bytes and v.coded_bytes:
            v.compression = base.file_bytes / v.coded_bytes


def pruning_ratios(stages: list[StageView]) -> dict[str, dict[str, float]]:
    """Per prune stage: the fraction of each layer's channels removed (structured, ``channels``:
    {layer: [before, after]}) or of its weights zeroed (unstructured, ``sparsity.layers``)."""
    series: dict[str, dict[str, float]] = {}
    for s in stages:
        if s.type != "prune":
            continue
        channels = _get(s.report, "channels")
        if isinstance(channels, dict) and channels:
            layers = {k: 1 - v[1] / v[0] for k, v in channels.items()
                      if isinstance(v, list) and len(v) == 2 and _num(v[0]) and _num(v[1]) is not None}
            series[f"{s.name}: channels removed"] = _forward_order(layers)
        sparsity = _get(s.report, "sparsity", "layers")
        if isinstance(sparsity, dict) and sparsity:
            series[f"{s.name}: weights zeroed"] = {k: v for k, v in sparsity.items() if _num(v) is not None}
    return {k: v for k, v in series.items() if v}


def _natural_key(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _forward_order(layers: dict[str, float]) -> dict[str, float]:
    # the structured pruner lists its channel groups from the output back to the input
    names = list(layers)
    if len(names) > 1 and _natural_key(names[0]) > _natural_key(names[-1]):
        names.reverse()
    return {n: layers[n] for n in names}


def huffman_bits(tensor: dict[str, Any]) -> float | None:
    """Coded bits per weight of one shared tensor: its Huffman weight and index streams over
    every weight of the layer, pruned zeros included (so 4-bit k-means codes of a dense layer
    show as at most 4 bits; codebooks and tables are left out, as in the k-means bits)."""
    count = tensor.get("count") or 0
    coded = (tensor.get("weights_bytes") or 0) + (tensor.get("index_bytes") or 0)
    return 8 * coded / count if count else None


def layer_bits(stages: list[StageView]) -> dict[str, dict[str, float]]:
    """Per k-means stage: the codebook index bits of each shared layer (``layers[].bits``); per
    Huffman stage: the coded bits per weight of each shared tensor (``stats.tensors``)."""
    series: dict[str, dict[str, float]] = {}
    for s in stages:
        if s.type == "quantize" and s.mode == "kmeans":
            rows = _get(s.report, "layers") or []
            series[f"{s.name}: k-means index bits"] = {
                r["name"]: r["bits"] for r in rows if isinstance(r, dict) and "name" in r and _num(r.get("bits"))}
        if s.type == "huffman":
            tensors = [t for t in _get(s.report, "stats", "tensors") or []
                       if isinstance(t, dict) and t.get("kind") == "shared" and "name" in t]
            series[f"{s.name}: Huffman-coded bits (zeros included)"] = {
                t["name"].removesuffix(".weight"): b for t in tensors if (b := huffman_bits(t)) is not None}
    return {k: v for k, v in series.items() if v}


def build_view(state: dict[str, Any], out_dir: Path) -> PipelineView:
    """Read the state and every report it names into one :class:`PipelineView`."""
    stages = stage_views(state, out_dir)
    bench_path = state.get("bench")
    bench = load_json(resolve_path(bench_path, out_dir))
    if bench is not None:
        variants, cells = bench_variants(bench, stages)
        source, note = f"bench report {bench_path}", None
        metric = next((v.get("accuracy_metric") for v in bench.get("variants") or []
                       if isinstance(v, dict) and v.get("accuracy_metric")), "top1")
        if not cells:
            note = "latency not measured: the bench report has no timing results"
    else:
        variants, cells, metric = stage_variants(stages), [], "top1"
        source = "the stages' own reports (test split)"
        note = ("latency not measured: the recipe has no bench stage" if not bench_path
                else f"latency not measured: bench report {bench_path} not found or unreadable")
    add_ratios(variants, cells)
    return PipelineView(state=state, bench=bench, stages=stages, variants=variants, cells=cells, source=source,
                        latency_note=note, metric=str(metric), ratios=pruning_ratios(stages), bits=layer_bits(stages))


# ----------------------------------------------------------------------------- text pieces

def _fmt_count(v: float | None) -> str:
    return "-" if v is None else human_count(v)


def _fmt_bytes(v: float | None) -> str:
    return "-" if v is None else human_bytes(v)


def _fmt_pct(v: float | None) -> str:
    return pct(v, 2) or "-"


def axis_bytes(v: float) -> str:
    """A tick label for a power of two bytes: 512 KiB, 2 MiB."""
    for div, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if v >= div:
            return f"{v / div:g} {suffix}"
    return f"{v:g} B"


def _fmt_ratio(v: float | None) -> str:
    return ratio(v) or "-"


def _fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _fmt_seconds(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} s"


def _delta(v: Variant, base: Variant) -> str:
    if v.accuracy is None or base.accuracy is None:
        return "accuracy not compared"
    return f"accuracy {_fmt_pct(v.accuracy)}, {100 * (v.accuracy - base.accuracy):+.2f} points"


def cell_label(view: PipelineView, cell: Cell) -> str:
    one_thread_count = len({t for _, t in view.cells}) == 1
    return f"b{cell[0]}" if one_thread_count else f"b{cell[0]} t{cell[1]}"


def headline(view: PipelineView) -> list[str]:
    """The summary sentences: best speed-up and best compression, each with its accuracy change."""
    base = view.baseline
    if base is None:
        return ["No model variants: the pipeline made no model, or its reports are missing."]
    others = view.variants[1:]
    lines = []
    cell = view.primary_cell
    fast = [v for v in others if cell in v.speedup]
    if fast:
        best = max(fast, key=lambda v: v.speedup[cell])
        lines.append(f"Best speed-up: {best.name}, {_fmt_ratio(best.speedup[cell])} faster than {base.name} at "
                     f"batch {cell[0]}, {cell[1]} threads (p50 {_fmt_ms(best.latency[cell][0])} ms vs "
                     f"{_fmt_ms(base.latency[cell][0])} ms); {_delta(best, base)}.")
    if view.latency_note:
        lines.append(view.latency_note[0].upper() + view.latency_note[1:] + ".")
    small = [v for v in others if v.compression is not None]
    if small:
        best = max(small, key=lambda v: v.compression)
        lines.append(f"Best compression: {best.name}, {_fmt_ratio(best.compression)} smaller than {base.name} "
                     f"({_fmt_bytes(best.coded_bytes)} vs {_fmt_bytes(base.file_bytes)}); {_delta(best, base)}.")
    return lines or [f"No variant to compare with the baseline {base.name}."]


def variant_columns(view: PipelineView) -> list[str]:
    cols = ["variant", "stage", "engine", "precision", "params", "MACs", "size on disk", "coded size",
            f"accuracy ({view.metric})", "agreement"]
    for cell in view.cells:
        cols += [f"p50 ms {cell_label(view, cell)}", f"p99 ms {cell_label(view, cell)}"]
    cols += [f"speed-up {cell_label(view, cell)}" for cell in view.cells]
    return cols + ["compression"]


def variant_cells(view: PipelineView, v: Variant) -> list[str]:
    row = [v.name, v.stage or "-", v.engine or "-", v.precision or "-", _fmt_count(v.params), _fmt_count(v.macs),
           _fmt_bytes(v.file_bytes), _fmt_bytes(v.stored_bytes), _fmt_pct(v.accuracy), _fmt_pct(v.agreement)]
    for cell in view.cells:
        p50, p99 = v.latency.get(cell, (None, None))
        row += [_fmt_ms(p50), _fmt_ms(p99)]
    row += [_fmt_ratio(v.speedup.get(cell)) for cell in view.cells]
    return row + [_fmt_ratio(v.compression)]


def stage_result(s: StageView) -> str:
    """A one-line key result of a stage, from its report ("-" without one)."""
    summarize = _SUMMARIES.get("quantize_kmeans" if s.type == "quantize" and s.mode == "kmeans" else s.type)
    if s.report is None or summarize is None:
        return "-"
    try:
        return summarize(s.report) or "-"
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError):
        return "-"  # a report of another version: the history still renders


def _sum_train(r: dict) -> str:
    test = _get(r, "result", "test_scalars") or {}
    m = next((x for x in (r.get("student"), r.get("model")) if isinstance(x, dict)), {})  # distill: student
    key = "top1" if "top1" in test else "map"
    return (f"test {key} {_fmt_pct(_num(test.get(key)))}; {_fmt_count(_num(m.get('params')))} params, "
            f"{_fmt_count(_num(m.get('macs')))} MACs")


def _sum_prune(r: dict) -> str:
    b, a = r.get("before") or {}, r.get("after") or {}
    text = f"params {_fmt_count(_num(b.get('params')))} → {_fmt_count(_num(a.get('params')))}"
    if _num(a.get("nonzero_params")) is not None and a.get("nonzero_params") != a.get("params"):
        text += f" ({_fmt_count(_num(a['nonzero_params']))} non-zero)"
    return text + f"; top1 {_fmt_pct(_num(b.get('top1')))} → {_fmt_pct(_num(a.get('top1')))}"


def _sum_export(r: dict) -> str:
    diff = _num(r.get("max_abs_diff"))
    return (f"opset {r.get('opset', '-')}, {r.get('nodes', '-')} nodes, "
            f"max abs diff {'-' if diff is None else f'{diff:.1e}'}")


def _sum_int8(r: dict) -> str:
    return (f"{_get(r, 'chosen', 'label') or '-'}: {_fmt_ratio(_num(_get(r, 'chosen', 'speedup')))} faster, "
            f"agreement {_fmt_pct(_num(r.get('test_agreement')) or _num(r.get('agreement')))}, "
            f"test accuracy {_fmt_pct(_num(r.get('fp32_test_accuracy')))} → "
            f"{_fmt_pct(_num(r.get('int8_test_accuracy')))}")


def _sum_kmeans(r: dict) -> str:
    bits = _get(r, "params", "bits")
    bits_s = ", ".join(f"{k} {v}-bit" for k, v in bits.items()) if isinstance(bits, dict) else str(bits)
    acc = r.get("accuracy") or {}
    after = _get(acc, "finetuned", "test") or _get(acc, "kmeans", "test")
    return (f"{bits_s}; {_fmt_ratio(_num(_get(r, 'storage', 'model_ratio')))} smaller at fixed width; "
            f"test {_fmt_pct(_num(_get(acc, 'before', 'test')))} → {_fmt_pct(_num(after))}")


def _sum_huffman(r: dict) -> str:
    s = r.get("sizes") or {}
    return (f"{_fmt_bytes(_num(s.get('dcz_bytes')))}, {_fmt_ratio(_num(s.get('ratio_fp32')))} smaller than fp32; "
            f"decoded test {_fmt_pct(_num(_get(r, 'accuracy', 'decoded', 'test')))}")


def _sum_eval(r: dict) -> str:
    m = r.get("metrics") or {}
    key = "top1" if "top1" in m else "map"
    return f"{r.get('split', 'test')} {key} {_fmt_pct(_num(m.get(key)))} on {r.get('n', '-')} images"


def _sum_bench(r: dict) -> str:
    cells = _cells([x for x in r.get("results") or [] if isinstance(x, dict)])
    grid = ", ".join(f"batch {b} at {t} threads" for b, t in cells) or "no timing"
    return f"{len(r.get('variants') or [])} variants; {grid}"


_SUMMARIES: dict[str, Callable[[dict], str]] = {
    "train": _sum_train, "distill": _sum_train, "prune": _sum_prune, "export": _sum_export,
    "quantize": _sum_int8, "quantize_kmeans": _sum_kmeans, "huffman": _sum_huffman, "eval": _sum_eval,
    "bench": _sum_bench}

HISTORY_COLUMNS = ["stage", "type", "status", "time", "key result", "output", "size"]


def history_cells(s: StageView) -> list[str]:
    return [s.name, s.label, s.status, _fmt_seconds(s.seconds), stage_result(s), s.output or "-", _fmt_bytes(s.size)]


def commands(view: PipelineView) -> str:
    """The pipeline command, then each stage's equivalent command (``#`` lines name the stage)."""
    lines = [f"$ {view.state.get('command') or 'compress pipeline'}"]
    for s in view.stages:
        lines += ["", f"# {s.name}: {s.label}, {s.status}", s.command or "(no command recorded)"]
    return "\n".join(lines)


def machine_lines(view: PipelineView) -> list[str]:
    lines = [f"pipeline: {_describe(view.state.get('machine'))}"]
    bench = view.bench
    if bench and isinstance(bench.get("machine"), dict):
        end = _get(bench, "machine", "load_average_end")
        lines.append(f"bench: {_describe(bench['machine'])}" + (f"; load at the end {end[0]:.2f}"
                                                                  if isinstance(end, list) and end else ""))
    return lines


def _describe(info: Any) -> str:
    from ..sysinfo import describe_machine

    if not isinstance(info, dict):
        return "not recorded"
    try:
        return describe_machine(info)
    except (KeyError, TypeError, ValueError, IndexError):  # a partial record: show what there is
        return json.dumps(info, sort_keys=True)


def recipe_text(state: dict[str, Any]) -> str:
    text = (state.get("recipe") or {}).get("text")
    return text.rstrip("\n") if isinstance(text, str) and text.strip() else "(not recorded)"


def run_line(state: dict[str, Any]) -> str:
    recipe = state.get("recipe") or {}
    return (f"recipe {recipe.get('path', '-')} (sha256 {str(recipe.get('sha256', '-'))[:12]}), "
            f"output folder {state.get('out_dir', '-')}; started {state.get('started', '-')}, "
            f"finished {state.get('finished', '-')}, {_fmt_seconds(_num(state.get('seconds')))}")


# ----------------------------------------------------------------------------- figures

@dataclass
class Figure:
    name: str  # file name in report_files/
    title: str
    alt: str
    path: Path


FIGURE_NAMES = ("accuracy_latency.png", "accuracy_size.png", "pruning_ratios.png", "layer_bits.png")


def _named_points(view: PipelineView, x: Callable[[Variant], float | None]) -> list[tuple[str, float, float]]:
    return [(v.name, x(v), 100 * v.accuracy) for v in view.variants if v.accuracy is not None and x(v)]


def draw_figures(view: PipelineView, folder: Path) -> list[Figure]:
    """Draw every plot the data allows into ``folder``; remove this report's stale plots there."""
    from .plots import plot_accuracy_vs, plot_per_layer

    figures, ylabel = [], f"accuracy, {view.metric} (%)"
    cell = view.primary_cell
    if cell is not None:
        pts = _named_points(view, lambda v: v.latency.get(cell, (None,))[0])
        if len(pts) >= 1:
            f = Figure("accuracy_latency.png", f"Accuracy vs latency (batch {cell[0]}, {cell[1]} threads)",
                       f"scatter plot of {ylabel} against median latency at batch {cell[0]}",
                       folder / "accuracy_latency.png")
            plot_accuracy_vs(pts, f.path, xlabel=f"median latency, batch {cell[0]} (ms)", ylabel=ylabel, title=f.title)
            figures.append(f)
    pts = _named_points(view, lambda v: v.coded_bytes)
    if pts:
        f = Figure("accuracy_size.png", "Accuracy vs size", f"scatter plot of {ylabel} against coded size",
                   folder / "accuracy_size.png")
        plot_accuracy_vs(pts, f.path, xlabel="coded size (log scale)", ylabel=ylabel, title=f.title, log_x=True,
                         log_base=2, x_format=axis_bytes)
        figures.append(f)
    if view.ratios:
        f = Figure("pruning_ratios.png", "Pruned fraction per layer", "bar chart of the pruned fraction of each layer",
                   folder / "pruning_ratios.png")
        plot_per_layer(view.ratios, f.path, ylabel="fraction pruned", title=f.title)
        figures.append(f)
    if view.bits:
        f = Figure("layer_bits.png", "Bits per weight per layer", "bar chart of the bits per weight of each layer",
                   folder / "layer_bits.png")
        plot_per_layer(view.bits, f.path, ylabel="bits per weight", title=f.title)
        figures.append(f)
    drawn = {f.name for f in figures}
    for name in FIGURE_NAMES:
        if name not in drawn and (folder / name).is_file():
            (folder / name).unlink()
    return figures


# ----------------------------------------------------------------------------- HTML

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1200px;
 padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}
.meta{color:#555;font-size:.9em}.headline li{margin:.3em 0}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f2f2f2}td.n{text-align:right;white-space:nowrap}tr:nth-child(even) td{background:#fafafa}
pre{background:#f6f6f6;border:1px solid #ddd;padding:.7em;overflow-x:auto;font-size:.85em}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}
"""

_NUMERIC = re.compile(r"^[-+]?[\d.,]+\s*(x|%|ms|s|B|KiB|MiB|GiB|k|M|G)?$")


def _esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def html_table(columns: Sequence[str], rows: Sequence[Sequence[str]], table_id: str) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "\n".join("<tr>" + "".join(f'<td class="n">{_esc(c)}</td>' if _NUMERIC.match(str(c)) else
                                      f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return (f'<div class="scroll"><table id="{table_id}">\n<thead><tr>{head}</tr></thead>\n'
            f"<tbody>\n{body}\n</tbody></table></div>")


def html_figure(fig: Figure) -> str:
    data = base64.b64encode(fig.path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_esc(fig.alt)}">'
            f"<figcaption>{_esc(fig.title)}</figcaption></figure>")


def render_html(view: PipelineView, figures: list[Figure]) -> str:
    state = view.state
    name = (state.get("recipe") or {}).get("name") or "pipeline"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>compress pipeline: {_esc(name)}</title><style>{CSS}</style></head><body>",
        f"<h1>compress pipeline: {_esc(name)}</h1>", f'<p class="meta">{_esc(run_line(state))}</p>',
        '<ul class="headline">' + "".join(f"<li>{_esc(x)}</li>" for x in headline(view)) + "</ul>",
        "<h2>Variants</h2>", f'<p class="meta">From {_esc(view.source)}. {_esc(_variants_note(view))}</p>',
        html_table(variant_columns(view), [variant_cells(view, v) for v in view.variants], "variants"),
        "<h2>Plots</h2>",
        *([html_figure(f) for f in figures] or ["<p>No plot: no accuracy, latency or per-layer data.</p>"]),
        "<h2>Stages</h2>",
        html_table(HISTORY_COLUMNS, [history_cells(s) for s in view.stages], "stages"),
        "<h2>Commands</h2>", f"<pre>{_esc(commands(view))}</pre>",
        "<h2>Machine</h2>", "<ul>" + "".join(f"<li>{_esc(x)}</li>" for x in machine_lines(view)) + "</ul>",
        "<h2>Recipe</h2>", f"<pre>{_esc(recipe_text(state))}</pre>",
        "</body></html>", ""]
    return "\n".join(parts)


def _variants_note(view: PipelineView) -> str:
    base = view.baseline.name if view.baseline else "-"
    text = (f"Baseline: {base}. Compression = baseline size on disk / coded size (the size on disk when "
            f"not coded).")
    if view.cells:
        text += " Latency: ms per forward pass of one batch (b = batch, t = threads); speed-up = baseline p50 / p50."
    return text + (f" {view.latency_note[0].upper()}{view.latency_note[1:]}." if view.latency_note else "")


# ----------------------------------------------------------------------------- Markdown

def _md_cell(v: Any) -> str:
    return html.escape(str(v), quote=False).replace("|", "\\|").replace("\n", " ")


def md_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(_md_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows])


def md_code(text: str, lang: str = "") -> str:
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}{lang}\n{text}\n{fence}"


def render_markdown(view: PipelineView, figures: list[Figure]) -> str:
    state = view.state
    name = (state.get("recipe") or {}).get("name") or "pipeline"
    parts = [f"# compress pipeline: {_md_cell(name)}", "", _md_cell(run_line(state)), "",
             *[f"- {_md_cell(x)}" for x in headline(view)], "",
             "## Variants", "", f"From {_md_cell(view.source)}. {_md_cell(_variants_note(view))}", "",
             md_table(variant_columns(view), [variant_cells(view, v) for v in view.variants]), "", "## Plots", ""]
    parts += [f"![{_md_cell(f.alt)}]({FILES_DIR}/{f.name})\n\n*{_md_cell(f.title)}*\n" for f in figures] or [
        "No plot: no accuracy, latency or per-layer data.", ""]
    parts += ["## Stages", "", md_table(HISTORY_COLUMNS, [history_cells(s) for s in view.stages]), "",
              "## Commands", "", md_code(commands(view), "sh"), "", "## Machine", "",
              *[f"- {_md_cell(x)}" for x in machine_lines(view)], "", "## Recipe", "",
              md_code(recipe_text(state), "yaml"), ""]
    return "\n".join(parts)


# ----------------------------------------------------------------------------- entry point

def _write_text(path: Path, text: str) -> None:
    from ..io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_pipeline_report(out_dir: str | os.PathLike, state: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``out_dir``/report.html (self-contained) and ``out_dir``/report.md (plots in
    ``out_dir``/report_files/); return the two paths. Missing reports show as "-"."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    view = build_view(state, out_dir)
    figures = draw_figures(view, out_dir / FILES_DIR)
    html_path, md_path = out_dir / HTML_NAME, out_dir / MD_NAME
    _write_text(html_path, render_html(view, figures))
    _write_text(md_path, render_markdown(view, figures))
    return html_path, md_path
