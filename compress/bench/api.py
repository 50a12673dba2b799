"""The bench stage: :class:`BenchConfig` → :func:`run_benchmark` → :class:`BenchReport`.

For every cell (batch size x thread count) each variant is warmed up, then all variants are timed
interleaved in blocks of about ``block_ms`` (:func:`compress.runtime.measure_interleaved`) until
the time budget is spent and every variant has at least ``min_runs`` timings. Ratios are to the
first variant (the baseline).
Latency is the wall-clock time of one forward pass of a batch (ms); throughput is images per
second at the median latency; achieved GMAC/s = MACs per image x batch / median latency.
With ``peers``, every ONNX file is also run by each peer runtime (:mod:`compress.bench.peers`),
and each variant records the precision its engine really computes in.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import StageConfig, option, parse_list
from ..errors import UserError
from ..runtime import SPIN_MODES, LatencyStats, measure_interleaved, random_images
from .peers import PEERS, openvino_version
from .variants import PeerCannotLoad, Variant, load_variant, peer_variant

_positive = (lambda v: all(x >= 1 for x in v), "values must be >= 1")


@dataclass(kw_only=True)
class BenchConfig(StageConfig):
    """Options of ``compress bench`` (the model files and the output prefix are arguments)."""

    batch: list[int] = option(default_factory=lambda: [1], parse=parse_list(int), check=_positive,
                              help="batch sizes, comma-separated", metavar="N[,N...]")
    threads: list[int] | None = option(None, parse=parse_list(int), check=_positive, metavar="N[,N...]",
                                       help="intra-op thread counts, comma-separated (default: the cores this "
                                            "process may use)")
    input_size: int | None = option(None, check=(lambda v: 8 <= v <= 4096, "must be between 8 and 4096"),
                                    help="square side to time at, e.g. 224 (default: each model's training size)")
    data: str | None = option(None, help="data set for accuracy and agreement with the baseline, e.g. digits")
    data_limit: int | None = option(None, check=(lambda v: v >= 1, "must be >= 1"),
                                    help="use at most this many test images")
    data_seed: int = option(0, help="seed of the train/val/test split, as in compress train")
    compile: bool = option(False, help="also time each .safetensors model with torch.compile")
    peers: list[str] = option(default_factory=list, parse=parse_list(str), choices=PEERS, metavar="PEER[,PEER...]",
                              help="also run each ONNX file in these runtimes: openvino (its defaults, bf16 on "
                                   "CPUs with bf16 units), openvino-f32 (precision hint f32); needs the "
                                   "'peers' extra")
    warmup: int = option(3, check=(lambda v: v >= 0, "must be >= 0"), help="untimed runs per variant per cell")
    min_runs: int = option(10, check=(lambda v: v >= 1, "must be >= 1"),
                           help="timed runs per variant per cell, at least")
    budget: float = option(2.0, check=(lambda v: v >= 0, "must be >= 0 seconds"),
                           help="timing seconds per variant per cell")
    ort_spinning: str = option("run", choices=SPIN_MODES,
                               help="ONNX Runtime's busy-waiting threads: run (spin while a run lasts, stop "
                                    "when it returns), on (its default: also spin after a run, stealing the "
                                    "cores of the variant timed next), off (never: every operator wakes "
                                    "sleeping threads, MobileNetV2-224 batch 1 a third slower here)")
    block_ms: float = option(20.0, check=(lambda v: v >= 0, "must be >= 0 ms"),
                             help="each variant's turn: consecutive runs lasting about this long, after one "
                                  "untimed run; 0 = one run per turn (every run then follows another "
                                  "model's and finds cold caches, which penalises small models most)")
    plot: bool = option(True, help="write the PNG plot next to the JSON and CSV")

    def resolved_threads(self) -> list[int]:
        from ..sysinfo import usable_cores

        return list(dict.fromkeys(self.threads or [usable_cores()]))

    def command_line(self, models: Sequence[str | os.PathLike]) -> str:
        """The resolved command, so a result can be reproduced."""
        parts = ["compress", "bench", *map(str, models), "--batch", ",".join(map(str, self.batch)),
                 "--threads", ",".join(map(str, self.resolved_threads())), "--warmup", str(self.warmup),
                 "--min-runs", str(self.min_runs), "--budget", str(self.budget), "--block-ms", f"{self.block_ms:g}",
                 "--ort-spinning", self.ort_spinning]
        for name in ("input_size", "data", "data_limit"):
            if getattr(self, name):
                parts += ["--" + name.replace("_", "-"), str(getattr(self, name))]
        if self.data and self.data_seed:
            parts += ["--data-seed", str(self.data_seed)]
        if self.peers:
            parts += ["--peers", ",".join(self.peers)]
        if self.compile:
            parts.append("--compile")
        return " ".join(parts)


@dataclass
class BenchReport:
    machine: dict[str, Any]
    config: dict[str, Any]
    variants: list[dict[str, Any]]  # static facts, one per variant, baseline first
    results: list[dict[str, Any]]  # one per (variant, batch, threads)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"machine": self.machine, "config": self.config, "variants": self.variants,
                "results": self.results, "warnings": self.warnings}


def unique_names(paths: Sequence[Path]) -> list[str]:
    """File names, or paths where names clash, numbered where even those clash."""
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        names = [str(p) for p in paths]
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n} #{seen[n]}")
    return out


def _load_variants(paths: list[Path], compile: bool, peers: Sequence[str] = ()) -> list[Variant]:
    """Each file's variant, followed by its torch.compile twin (``compile``, .safetensors) or its
    peer-runtime twins (``peers``, ONNX files)."""
    variants: list[Variant] = []
    for p, n in zip(paths, unique_names(paths)):
        v = load_variant(p, n)
        variants.append(v)
        if compile and v.model is not None:
            variants.append(Variant(name=f"{n} [compile]", path=p, engine="pytorch.compile",
                                    file_bytes=v.file_bytes, stored_bytes=v.stored_bytes, params=v.params,
                                    meta=v.meta, model=v.model, precision=v.precision, _macs=v._macs))
        for peer in dict.fromkeys(peers) if v.is_onnx else ():
            try:
                variants.append(peer_variant(v, peer))
            except PeerCannotLoad as e:
                v.warnings.append(str(e))
    return variants


def _preflight(variants: list[Variant], sizes: dict[str, tuple], cfg: BenchConfig, machine: dict) -> list[str]:
    """Check every cell can run; return the warnings the report carries."""
    found = [w for v in variants for w in v.warnings]
    if len(set(sizes.values())) > 1:
        found.append("variants are timed at different input sizes (" + ", ".join(
            f"{n}: {s[1]}x{s[2]}" for n, s in sizes.items()) + "); pass --input-size to compare like for like")
    for v in variants:
        for b in cfg.batch:
            v.timing_size(cfg.input_size, batch=b)
    cores = os.cpu_count() or 1
    found += [f"{t} threads on a machine with {cores} logical CPUs: oversubscribed"
              for t in cfg.resolved_threads() if t > cores]
    load = machine.get("load_average")
    if load and load[0] > machine["usable_cores"]:
        found.append(f"busy machine: load average {load[0]:.1f} on {machine['usable_cores']} usable cores; "
                     "absolute times are unreliable, compare the ratios")
    return found


def _timing_rows(variants: list[Variant], sizes: dict[str, tuple], cells: list[list[LatencyStats]]):
    """One row per (cell, variant): percentiles, throughput, ratios to the baseline, GMAC/s."""
    rows = []
    for cell in cells:
        base = cell[0]
        for v, st in zip(variants, cell):
            size = sizes[v.name]
            macs = v.macs(size)
            rows.append({"model": v.name, "engine": v.engine, "batch": st.batch, "threads": st.threads,
                         "input": f"{size[1]}x{size[2]}", **st.to_dict(),
                         "speedup": base.p50_ms / st.p50_ms if st.p50_ms > 0 else None,
                         "latency_ratio": st.p50_ms / base.p50_ms if base.p50_ms > 0 else None,
                         "gmacs_per_s": (macs * st.batch / (st.p50_ms / 1000.0) / 1e9) if macs else None})
    return rows


def _static_rows(variants: list[Variant], sizes: dict[str, tuple], metrics: dict[str, dict]) -> list[dict]:
    base = variants[0]
    base_macs = base.macs(sizes[base.name])
    rows = []
    for v in variants:
        size = sizes[v.name]
        macs = v.macs(size)
        m = metrics.get(v.name, {})
        rows.append({
            "model": v.name, "path": str(v.path), "engine": v.engine, "precision": v.precision,
            "arch": v.meta.arch if v.meta else None,
            "has_metadata": v.meta is not None, "file_bytes": v.file_bytes, "stored_bytes": v.stored_bytes,
            "size_ratio": v.file_bytes / base.file_bytes, "params": v.params,
            "params_ratio": (v.params / base.params) if v.params and base.params else None,
            "input": f"{size[1]}x{size[2]}", "macs": macs,
            "macs_ratio": (macs / base_macs) if macs and base_macs else None,
            "accuracy": m.get("accuracy"), "accuracy_metric": m.get("metric"), "agreement": m.get("agreement"),
            "eval_samples": m.get("samples"), "eval_note": m.get("note"),
        })
    return rows


class _Runners:
    """One runner per (variant, threads), created on first use and reused across cells."""

    def __init__(self, spinning: bool | str):
        self.spinning = spinning
        self.cache: dict[tuple[str, int], Any] = {}

    def get(self, v: Variant, threads: int):
        key = (v.name, threads if v.is_onnx else 0)  # a torch module's threads are process-wide
        if key not in self.cache:
            self.cache[key] = v.runner(threads, spinning=self.spinning)
        return self.cache[key]


def run_benchmark(paths: Sequence[str | os.PathLike], config: BenchConfig | None = None, *,
                  progress: Callable[[str], None] | None = None) -> BenchReport:
    """Compare the models in ``paths`` (the first is the baseline) over every batch size x thread
    count of ``config``. PyTorch is imported only when a variant needs it."""
    from ..sysinfo import machine_info

    cfg = (config or BenchConfig()).validate()
    if not paths:
        raise UserError("give at least one model file")
    say = progress or (lambda _msg: None)
    paths = [Path(p) for p in paths]
    # a missing peer runtime fails here, in one line, before any model is loaded
    peer_versions = {"openvino": openvino_version()} if cfg.peers else {}
    variants = _load_variants(paths, cfg.compile, cfg.peers)
    sizes = {v.name: v.timing_size(cfg.input_size) for v in variants}
    machine = machine_info()
    machine["versions"].update(peer_versions)
    report_warnings = _preflight(variants, sizes, cfg, machine)
    for w in report_warnings:
        warnings.warn(w, stacklevel=2)
    runners = _Runners(cfg.ort_spinning)
    threads = cfg.resolved_threads()
    metrics: dict[str, dict[str, Any]] = {}
    cells: list[list[LatencyStats]] = []
    with _torch_threads_if_needed(variants, max(threads)) as set_threads:
        if cfg.data:
            from .accuracy import data_metrics

            say(f"accuracy on {cfg.data} ...")
            metrics = data_metrics(variants, cfg.data, cfg.data_limit, cfg.data_seed,
                                   {v.name: runners.get(v, max(threads)) for v in variants}, cfg.input_size)
        for t in threads:
            set_threads(t)
            for b in cfg.batch:
                say(f"timing batch {b}, {t} thread(s): {len(variants)} variants interleaved ...")
                cell = [runners.get(v, t) for v in variants]
                for v, r in zip(variants, cell):
                    r.set_input(random_images(b, sizes[v.name]))
                samples = measure_interleaved(cell, warmup=cfg.warmup, min_runs=cfg.min_runs, budget_s=cfg.budget,
                                              block_s=cfg.block_ms / 1000)
                cells.append([LatencyStats.from_seconds(s, b, t) for s in samples])
    machine["load_average_end"] = machine_info().get("load_average")
    config_dict = {**cfg.to_dict(), "threads": threads, "models": [str(p) for p in paths], "interleaved": True,
                   "throughput": "images/s at the median latency", "latency": "ms per forward pass of one batch",
                   "command": cfg.command_line(paths)}
    return BenchReport(machine=machine, config=config_dict, variants=_static_rows(variants, sizes, metrics),
                       results=_timing_rows(variants, sizes, cells), warnings=report_warnings)


def _torch_threads_if_needed(variants: list[Variant], initial: int):
    """A context yielding ``set_threads(n)``: PyTorch's process-wide thread count when a variant
    runs in PyTorch (restored on exit), else a no-op, so ONNX-only benches never import torch."""
    import contextlib

    if all(v.is_onnx for v in variants):
        return contextlib.nullcontext(lambda n: None)
    from ..torch_utils import restore_torch_threads

    return restore_torch_threads(initial)
