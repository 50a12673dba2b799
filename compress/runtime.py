"""The torch-free bottom layer: ONNX Runtime sessions, timed runners, interleaved timing and
latency statistics. Imports numpy and onnxruntime only, so opening, running and timing an ONNX
model never pulls in PyTorch (bench, prune's latency target, quantize and — by copy of the idea —
the service all build on it).

Timing method: every runner is warmed up, then all are timed *interleaved* — A B C A B C ... —
so drift on a shared CPU (other jobs, frequency changes) hits every variant alike, and ratios
between variants measured in one call are more trustworthy than absolute times. The benchmarks
interleave in *blocks* (``block_s``): a few consecutive calls per variant, after one untimed call,
because a run that follows another model's finds cold caches and a sleeping thread pool, which
costs a small, fast model far more than a big one (see :func:`measure_interleaved`).

ONNX Runtime's thread pool can busy-wait (``spinning``): ``"on"`` is its default (workers spin
between operators *and* after a run, stealing the cores of whatever runs next), ``"off"`` never
spins (every operator wakes sleeping workers: on a 2-core EPYC MobileNetV2-224 fp32 took 6.6 ms
instead of 5.0), ``"run"`` spins within a run and stops when it returns
(``session.force_spinning_stop``): as fast as ``"on"`` for a model alone and fair to the next one.

    stats = time_onnx("model.onnx", batch=1, threads=2)   # LatencyStats, milliseconds
    a, b = time_onnx_interleaved(["base.onnx", "pruned.onnx"], (3, 224, 224))
"""
from __future__ import annotations

import gc
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .errors import UserError

DEFAULT_WARMUP = 3
DEFAULT_RUNS = 30
DEFAULT_MIN_RUNS = 10
DEFAULT_BUDGET_S = 2.0  # per variant per cell
MAX_RUNS = 2000
DEFAULT_BLOCK_S = 0.02  # what the benchmarks use; measure_interleaved's own default is 0 (strict A B C)
MAX_BLOCK = 100
SPIN_MODES = ("off", "run", "on")


def spin_mode(spinning: bool | str) -> str:
    """``True``/``False`` (ONNX Runtime's own on/off) or one of :data:`SPIN_MODES`."""
    if spinning is True or spinning is False:
        return "on" if spinning else "off"
    if spinning not in SPIN_MODES:
        raise ValueError(f"spinning must be one of {', '.join(SPIN_MODES)}, got {spinning!r}")
    return str(spinning)


def ort_session(path: str | os.PathLike, threads: int = 1, *, spinning: bool | str = True):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads, sequential execution, all
    graph optimisations. ``spinning``: ``True``/``"on"`` ONNX Runtime's default busy-waiting,
    ``False``/``"off"`` none, ``"run"`` only while a run lasts (see the module docstring)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only
    mode = spin_mode(spinning)
    if mode == "off":
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    elif mode == "run":
        so.add_session_config_entry("session.intra_op.allow_spinning", "1")
        so.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one forward pass of ``batch`` images with ``threads`` intra-op threads (ms)."""

    batch: int
    threads: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    iqr_ms: float  # p75 - p25: the spread, robust to the outliers a shared CPU produces
    min_ms: float
    max_ms: float

    @property
    def throughput(self) -> float:
        """Images per second at the median latency."""
        return self.batch * 1000.0 / self.p50_ms if self.p50_ms > 0 else float("inf")

    @classmethod
    def from_seconds(cls, samples_s: Sequence[float], batch: int, threads: int) -> "LatencyStats":
        ms = np.asarray(samples_s, dtype=np.float64) * 1000.0
        if ms.size == 0:
            raise ValueError("no timings")
        p25, p50, p75, p90, p99 = np.percentile(ms, [25, 50, 75, 90, 99])
        return cls(batch=int(batch), threads=int(threads), runs=int(ms.size), p50_ms=float(p50),
                   p90_ms=float(p90), p99_ms=float(p99), mean_ms=float(ms.mean()), std_ms=float(ms.std()),
                   iqr_ms=float(p75 - p25), min_ms=float(ms.min()), max_ms=float(ms.max()))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["throughput"] = self.throughput
        return d

    def format(self) -> str:
        """One line: 'p50 12.30 ms (p90 13.00, p99 15.20, IQR 0.40; 81.3 img/s, 30 runs, batch 1, 2 thr)'."""
        return (f"p50 {self.p50_ms:.2f} ms (p90 {self.p90_ms:.2f}, p99 {self.p99_ms:.2f}, IQR {self.iqr_ms:.2f}; "
                f"{self.throughput:.1f} img/s, {self.runs} runs, batch {self.batch}, {self.threads} thr)")


def measure_interleaved(runners: Sequence[Callable[[], Any]], *, warmup: int = DEFAULT_WARMUP,
                        min_runs: int = DEFAULT_MIN_RUNS, budget_s: float = DEFAULT_BUDGET_S,
                        max_runs: int = MAX_RUNS, block_s: float = 0.0) -> list[list[float]]:
    """Time each runner (one call = one timed forward pass) interleaved: r0 r1 r2 r0 r1 r2 ...

    Each runner is first called ``warmup`` times. Rounds continue until ``budget_s`` x
    len(runners) seconds have passed and every runner has ``min_runs`` timings (or ``max_runs``
    is reached). Returns the per-runner timings in seconds. The garbage collector is paused
    while timing.

    ``block_s > 0``: in each round a runner gets a *block* of consecutive timed calls lasting
    about ``block_s`` seconds (sized from its last warm-up call, 1 to :data:`MAX_BLOCK`; a lone
    runner needs no blocks), after one untimed call that re-warms caches and threads. Strict
    alternation times every call cold: on a 2-core EPYC an INT8 MobileNetV2-224 took 2.8-3.0 ms
    one call at a time against 2.3-2.8 ms in blocks of 10, its fp32 original 4.9-6.8 against
    4.8-5.5 ms. Drift still hits every runner alike at the scale of a round."""
    if not runners:
        return []
    if min_runs < 1 or max_runs < min_runs:
        raise ValueError(f"need 1 <= min_runs <= max_runs, got {min_runs}, {max_runs}")
    clock = time.perf_counter
    blocks = [1] * len(runners)
    for i, run in enumerate(runners):
        for _ in range(max(0, warmup)):
            t0 = clock()
            run()
            last = clock() - t0
            if block_s > 0 and len(runners) > 1:
                blocks[i] = max(1, min(MAX_BLOCK, int(block_s / max(last, 1e-9))))
    times: list[list[float]] = [[] for _ in runners]
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        deadline = clock() + budget_s * len(runners)
        while True:
            for i, run in enumerate(runners):
                todo = min(blocks[i], max_runs - len(times[i]))
                if todo <= 0:
                    continue
                if blocks[i] > 1:
                    run()  # untimed: re-warm after the other runners
                for _ in range(todo):
                    t0 = clock()
                    run()
                    times[i].append(clock() - t0)
            n = min(len(t) for t in times)
            if n >= max_runs or (n >= min_runs and clock() >= deadline):
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def square_size(input_size: int | Sequence[int], channels: int = 3) -> tuple[int, int, int]:
    """A side length or (C, H, W) → (C, H, W)."""
    if isinstance(input_size, int):
        return (channels, input_size, input_size)
    if len(input_size) != 3:
        raise UserError(f"input size must be a side length or (C, H, W), got {input_size}")
    return tuple(int(v) for v in input_size)  # type: ignore[return-value]


def random_images(batch: int, size: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A seeded (batch, C, H, W) float32 batch of standard-normal values (latency does not
    depend on the values)."""
    return np.random.default_rng(seed).standard_normal((batch, *size), dtype=np.float32)


def _fixed(dims: Sequence[Any]) -> bool:
    return all(isinstance(d, int) and d > 0 for d in dims)


def resolve_input_size(requested: int | Sequence[int] | None, *, meta_size: Sequence[int] | None = None,
                       graph_shape: Sequence[Any] | None = None, batch: int | None = None,
                       source: str = "the model") -> tuple[int, int, int]:
    """The (C, H, W) to run a model at: ``requested`` (a side or C, H, W) if given, else the
    size in its metadata, else the fixed C, H, W of its graph (``graph_shape``: N, C, H, W with
    ints for fixed axes). :class:`UserError` when the graph fixes another size or batch."""
    graph = tuple(graph_shape or ())
    if requested is not None:
        channels = int(meta_size[0]) if meta_size else (graph[1] if len(graph) > 1 and _fixed(graph[1:2]) else 3)
        size = square_size(requested, channels)
        spatial = graph[2:]
        if len(spatial) == 2 and _fixed(spatial) and tuple(spatial) != size[1:]:
            raise UserError(f"{source}: the graph's input is fixed at {spatial[0]}x{spatial[1]}; it cannot run at "
                            f"{size[1]}x{size[2]} (re-export without --static-shape)")
    elif meta_size is not None:
        size = tuple(int(v) for v in meta_size)  # type: ignore[assignment]
    elif len(graph) == 4 and _fixed(graph[1:]):
        size = tuple(graph[1:])  # type: ignore[assignment]
    else:
        raise UserError(f"{source}: no input size in its metadata or graph; pass --input-size")
    if batch is not None and graph and _fixed(graph[:1]) and graph[0] != batch:
        raise UserError(f"{source}: the graph has a fixed batch size of {graph[0]}; use --batch {graph[0]}")
    return size  # type: ignore[return-value]


def check_batch_threads(batch: int, threads: int) -> None:
    if int(batch) < 1:
        raise UserError(f"batch size must be >= 1, got {batch}")
    if int(threads) < 1:
        raise UserError(f"thread count must be >= 1, got {threads}")


class OnnxRunner:
    """One ONNX Runtime session at a fixed thread count; ``set_input`` then call to time a run."""

    def __init__(self, path: str | os.PathLike, threads: int, *, spinning: bool | str = True):
        self.session = ort_session(path, threads, spinning=spinning)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = tuple(inp.shape)  # ints for fixed axes, names (or None) for dynamic ones
        self.dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        self.feed: dict[str, np.ndarray] = {}

    def metadata_input_size(self) -> tuple[int, int, int] | None:
        """[C, H, W] from the model's compress metadata (``input_size``), if it has any."""
        text = self.session.get_modelmeta().custom_metadata_map.get("input_size")
        try:
            size = json.loads(text) if text else None
        except ValueError:
            return None
        return tuple(int(v) for v in size) if isinstance(size, list) and len(size) == 3 else None

    def input_size_for(self, requested: int | Sequence[int] | None = None, batch: int = 1) -> tuple[int, int, int]:
        """The (C, H, W) to run at (see :func:`resolve_input_size`)."""
        return resolve_input_size(requested, meta_size=self.metadata_input_size(), graph_shape=self.input_shape,
                                  batch=batch)

    def set_input(self, images: np.ndarray) -> None:
        self.feed = {self.input_name: images.astype(self.dtype, copy=False)}

    def __call__(self) -> Any:
        return self.session.run(None, self.feed)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: images.astype(self.dtype, copy=False)})[0]


def time_onnx_interleaved(paths: Sequence[str | os.PathLike], input_size: int | Sequence[int] | None = None, *,
                          batch: int = 1, threads: int = 2, warmup: int = DEFAULT_WARMUP,
                          runs: int = DEFAULT_RUNS, spinning: bool | str = "run",
                          block_s: float = DEFAULT_BLOCK_S) -> list[LatencyStats]:
    """Latency of each ONNX model under ONNX Runtime (CPU), timed interleaved on the same random
    batch: ``warmup`` untimed runs each, then ``runs`` timed runs each, in blocks of about
    ``block_s`` seconds (see :func:`measure_interleaved`). ``input_size`` (side or C, H, W)
    defaults to each model's own (metadata, else graph)."""
    check_batch_threads(batch, threads)
    if runs < 1:
        raise UserError(f"runs must be >= 1, got {runs}")
    runners = []
    for path in paths:
        runner = OnnxRunner(path, threads, spinning=spinning)
        runner.set_input(random_images(batch, runner.input_size_for(input_size, batch)))
        runners.append(runner)
    samples = measure_interleaved(runners, warmup=warmup, min_runs=runs, budget_s=0.0, max_runs=runs,
                                  block_s=block_s)
    return [LatencyStats.from_seconds(s, batch, threads) for s in samples]


def time_onnx(path: str | os.PathLike, *, batch: int = 1, threads: int = 2,
              input_size: int | Sequence[int] | None = None, warmup: int = DEFAULT_WARMUP,
              runs: int = DEFAULT_RUNS) -> LatencyStats:
    """Latency of one ONNX model (see :func:`time_onnx_interleaved`)."""
    return time_onnx_interleaved([path], input_size, batch=batch, threads=threads, warmup=warmup, runs=runs)[0]
