"""Latency, size and accuracy of model variants, measured so that the comparison is honest.

Variants are model artifacts (``.safetensors`` → PyTorch eager, optionally also ``torch.compile``)
and ONNX files (→ ONNX Runtime on CPU; int8 models are just ONNX models). For every cell
(batch size x thread count) each variant is warmed up, then all variants are timed *interleaved*
— A B C A B C ... — until the time budget is spent and every variant has at least ``min_runs``
timings, so drift on a shared CPU (other jobs, frequency changes) hits every variant alike.
Ratios to the first variant (the baseline) are therefore more trustworthy than absolute times.

Latency is the wall-clock time of one forward pass of a batch (ms); throughput is images per
second at the median latency. Achieved GMAC/s = MACs per image x batch / median latency: compare
it with what the CPU can do to see how far a variant is from the hardware's limit.

Library entry points: :func:`time_onnx`, :func:`time_torch` (one variant, fixed run count) and
:func:`run_benchmark` (the full comparison behind ``compress bench``).
"""
from __future__ import annotations

import csv
import gc
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import UserError

DEFAULT_WARMUP = 3
DEFAULT_RUNS = 30
DEFAULT_MIN_RUNS = 10
DEFAULT_BUDGET_S = 2.0  # per variant per cell
MAX_RUNS = 2000


# --------------------------------------------------------------------------------------------
# statistics


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


def measure_interleaved(runners: Sequence[Callable[[], Any]], *, warmup: int = DEFAULT_WARMUP,
                        min_runs: int = DEFAULT_MIN_RUNS, budget_s: float = DEFAULT_BUDGET_S,
                        max_runs: int = MAX_RUNS) -> list[list[float]]:
    """Time each runner (one call = one timed forward pass) interleaved: r0 r1 r2 r0 r1 r2 ...

    Each runner is first called ``warmup`` times. Rounds continue until ``budget_s`` x
    len(runners) seconds have passed and every runner has ``min_runs`` timings (or ``max_runs``
    is reached). Returns the per-runner timings in seconds. The garbage collector is paused
    while timing."""
    if not runners:
        return []
    if min_runs < 1 or max_runs < min_runs:
        raise ValueError(f"need 1 <= min_runs <= max_runs, got {min_runs}, {max_runs}")
    for run in runners:
        for _ in range(max(0, warmup)):
            run()
    times: list[list[float]] = [[] for _ in runners]
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    clock = time.perf_counter
    try:
        deadline = clock() + budget_s * len(runners)
        while True:
            for i, run in enumerate(runners):
                t0 = clock()
                run()
                times[i].append(clock() - t0)
            n = len(times[0])
            if n >= max_runs or (n >= min_runs and clock() >= deadline):
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


# --------------------------------------------------------------------------------------------
# runners: one callable per (variant, batch, threads, input size)


def _square(input_size: int | Sequence[int], channels: int = 3) -> tuple[int, int, int]:
    if isinstance(input_size, int):
        return (channels, input_size, input_size)
    if len(input_size) != 3:
        raise UserError(f"input size must be a side length or (C, H, W), got {input_size}")
    return tuple(int(v) for v in input_size)  # type: ignore[return-value]


def _random_images(batch: int, size: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, *size), dtype=np.float32)


class OnnxRunner:
    """One ONNX Runtime session at a fixed thread count; ``set_input`` then call to time a run."""

    def __init__(self, path: str | os.PathLike, threads: int, *, spinning: bool = True):
        from .export import ort_session

        self.session = ort_session(path, threads, spinning=spinning)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        self.feed: dict[str, np.ndarray] = {}

    def set_input(self, images: np.ndarray) -> None:
        self.feed = {self.input_name: images.astype(self.dtype, copy=False)}

    def __call__(self) -> Any:
        return self.session.run(None, self.feed)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: images.astype(self.dtype, copy=False)})[0]


class TorchRunner:
    """A PyTorch module (eager or ``torch.compile``) run under ``inference_mode``.

    PyTorch's intra-op thread count is process-wide: the caller sets it per cell
    (``torch.set_num_threads``)."""

    def __init__(self, model, *, compile: bool = False):
        import torch

        self.torch = torch
        model.eval()
        self.model = torch.compile(model) if compile else model
        self.x = None

    def set_input(self, images: np.ndarray) -> None:
        self.x = self.torch.from_numpy(np.ascontiguousarray(images))

    def __call__(self) -> Any:
        with self.torch.inference_mode():
            return self.model(self.x)

    def predict(self, images: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.torch.from_numpy(np.ascontiguousarray(images))).float().numpy()


def _check_batch_threads(batch: int, threads: int) -> None:
    if int(batch) < 1:
        raise UserError(f"batch size must be >= 1, got {batch}")
    if int(threads) < 1:
        raise UserError(f"thread count must be >= 1, got {threads}")


def time_onnx(path: str | os.PathLike, *, batch: int = 1, threads: int = 2,
              input_size: int | Sequence[int] | None = None, warmup: int = DEFAULT_WARMUP,
              runs: int = DEFAULT_RUNS) -> LatencyStats:
    """Latency of the ONNX model at ``path`` under ONNX Runtime (CPU): ``warmup`` untimed runs,
    then ``runs`` timed runs of one random batch. ``input_size`` (side or C,H,W) defaults to the
    size in the model's metadata, else the static size in its graph."""
    _check_batch_threads(batch, threads)
    variant = load_variant(path)
    size = variant.timing_size(input_size)
    variant.check_batch(batch)
    runner = OnnxRunner(variant.onnx_path, threads)
    runner.set_input(_random_images(batch, size))
    (samples,) = measure_interleaved([runner], warmup=warmup, min_runs=runs, budget_s=0.0, max_runs=runs)
    return LatencyStats.from_seconds(samples, batch, threads)


def time_torch(model, *, batch: int = 1, threads: int = 2, input_size: int | Sequence[int] | None = None,
               warmup: int = DEFAULT_WARMUP, runs: int = DEFAULT_RUNS, compile: bool = False) -> LatencyStats:
    """Latency of a PyTorch module (eager, or ``torch.compile`` when ``compile``) on CPU with
    ``threads`` intra-op threads (restored afterwards). ``input_size`` defaults to the model's
    ``default_cfg``."""
    import torch

    _check_batch_threads(batch, threads)
    if input_size is None:
        input_size = tuple(getattr(model, "default_cfg", {}).get("input_size", (3, 224, 224)))
    size = _square(input_size)
    runner = TorchRunner(model, compile=compile)
    runner.set_input(_random_images(batch, size))
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        (samples,) = measure_interleaved([runner], warmup=warmup, min_runs=runs, budget_s=0.0, max_runs=runs)
    finally:
        torch.set_num_threads(before)
    return LatencyStats.from_seconds(samples, batch, threads)


# --------------------------------------------------------------------------------------------
# variants: a file on disk → what we know about it and how to run it


@dataclass
class LoadedModel:
    """What a format loader returns: a PyTorch module and/or an ONNX file, plus the facts."""

    model: Any = None  # nn.Module for the PyTorch engines
    onnx_path: Path | None = None
    meta: Any = None  # ModelMeta | None
    stored_bytes: int | None = None  # size of a compressed container (.dcz), if that is the input


# suffix → loader. ``.safetensors`` and ``.onnx`` are built in; the Huffman stage registers its
# container (``register_format(".dcz", load_dcz)`` returning a LoadedModel with ``stored_bytes``).
_FORMATS: dict[str, Callable[[Path], LoadedModel]] = {}


def register_format(suffix: str, loader: Callable[[Path], LoadedModel]) -> None:
    """Teach :func:`load_variant` a new file type (e.g. a compressed container)."""
    _FORMATS[suffix.lower()] = loader


def _load_safetensors(path: Path) -> LoadedModel:
    from .artifact import load_model

    model, meta = load_model(path)
    return LoadedModel(model=model, meta=meta)


def _load_onnx(path: Path) -> LoadedModel:
    from .onnx_meta import load_onnx, props_to_meta

    proto = load_onnx(path)
    meta = props_to_meta({p.key: p.value for p in proto.metadata_props}, str(path), warn=False)
    return LoadedModel(onnx_path=path, meta=meta)


register_format(".safetensors", _load_safetensors)
register_format(".onnx", _load_onnx)


@dataclass
class Variant:
    """One input file and the facts about it that do not depend on the timing cell."""

    name: str
    path: Path
    engine: str  # "pytorch" | "pytorch.compile" | "onnxruntime" | "onnxruntime-int8"
    file_bytes: int
    stored_bytes: int | None
    params: int | None
    meta: Any = None
    model: Any = None
    onnx_path: Path | None = None
    graph_input: tuple[Any, ...] | None = None  # ONNX input shape (ints or symbolic names)
    warnings: list[str] = field(default_factory=list)
    _macs: dict[tuple[int, int, int], int | None] = field(default_factory=dict)

    @property
    def is_onnx(self) -> bool:
        return self.onnx_path is not None

    def timing_size(self, input_size: int | Sequence[int] | None) -> tuple[int, int, int]:
        """The (C, H, W) to time at: ``input_size`` if given, else the metadata's, else the graph's."""
        channels = 3
        if self.meta is not None:
            channels = int(self.meta.input_size[0])
        elif self.graph_input is not None and isinstance(self.graph_input[1], int):
            channels = self.graph_input[1]
        if input_size is not None:
            size = _square(input_size, channels)
            fixed = self.graph_input[2:] if self.graph_input is not None else ()
            if len(fixed) == 2 and all(isinstance(d, int) and d > 0 for d in fixed) and tuple(fixed) != size[1:]:
                raise UserError(f"{self.path}: the graph's input is fixed at {fixed[0]}x{fixed[1]}; it cannot be "
                                f"timed at {size[1]}x{size[2]} (re-export without --static-shape)")
            return size
        if self.meta is not None:
            return tuple(int(v) for v in self.meta.input_size)  # type: ignore[return-value]
        if self.graph_input is not None and all(isinstance(d, int) and d > 0 for d in self.graph_input[1:]):
            return tuple(self.graph_input[1:])  # type: ignore[return-value]
        raise UserError(f"{self.path}: no input size in its metadata or graph; pass --input-size")

    def check_batch(self, batch: int) -> None:
        if self.graph_input is not None and isinstance(self.graph_input[0], int) and self.graph_input[0] > 0 \
                and self.graph_input[0] != batch:
            raise UserError(f"{self.path}: the graph has a fixed batch size of {self.graph_input[0]}; "
                            f"use --batch {self.graph_input[0]}")

    def macs(self, size: tuple[int, int, int]) -> int | None:
        """MACs per image at ``size`` (convolutions and fully connected layers)."""
        if size not in self._macs:
            if self.model is not None:
                from models import count_macs

                self._macs[size] = count_macs(self.model, size)
            else:
                self._macs[size] = onnx_macs(self.onnx_path, size)
        return self._macs[size]


def _is_int8(proto) -> bool:
    quant_ops = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger",
                 "QLinearMatMul", "DynamicQuantizeLinear"}
    return any(n.op_type in quant_ops for n in proto.graph.node)


def _onnx_params(proto) -> int:
    """Weights stored in the graph: initializers with a float or 8-bit element type (shape
    tensors and quantization scales/zero points of size 1 are not weights)."""
    from onnx import TensorProto

    weight_types = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE,
                    TensorProto.INT8, TensorProto.UINT8}
    total = 0
    for init in proto.graph.initializer:
        n = int(np.prod(init.dims)) if len(init.dims) else 1
        if init.data_type in weight_types and n > 1:
            total += n
    return total


def _graph_input_shape(proto) -> tuple[Any, ...]:
    init_names = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in init_names]
    dims = inputs[0].type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims)


def load_variant(path: str | os.PathLike, name: str | None = None) -> Variant:
    """Open one bench input. Raises :class:`UserError` for a missing file or one that is neither a
    model artifact nor an ONNX model; warns (in ``Variant.warnings``) about an ONNX model without
    our metadata."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a .safetensors artifact or an .onnx model")
    loader = _FORMATS.get(path.suffix.lower())
    if loader is None:
        loader = _sniff_format(path)
    loaded = loader(path)
    file_bytes = path.stat().st_size
    v = Variant(name=name or path.name, path=path, engine="pytorch", file_bytes=file_bytes,
                stored_bytes=loaded.stored_bytes, params=None, meta=loaded.meta, model=loaded.model,
                onnx_path=loaded.onnx_path)
    if loaded.onnx_path is not None:
        from .onnx_meta import load_onnx

        proto = load_onnx(loaded.onnx_path)
        v.engine = "onnxruntime-int8" if _is_int8(proto) else "onnxruntime"
        v.params = _onnx_params(proto)
        v.graph_input = _graph_input_shape(proto)
        if loaded.meta is None:
            v.warnings.append(f"{path}: ONNX model without compress metadata (no labels or normalisation); "
                              f"input shape from its graph: {list(v.graph_input)}")
        try:  # ONNX Runtime must accept it; this fails early for files onnx.load half-parsed
            OnnxRunner(loaded.onnx_path, 1)
        except Exception as e:  # onnxruntime raises its own exception types
            raise UserError(f"{path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:200]})") from None
    else:
        from models import count_params

        v.params = count_params(loaded.model)
    return v


def _sniff_format(path: Path) -> Callable[[Path], LoadedModel]:
    """Loader for a file with an unknown suffix, by content: safetensors starts with an 8-byte
    little-endian header length followed by ``{``; anything else is tried as ONNX."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        return _load_safetensors
    from .errors import ArtifactError

    def try_onnx(p: Path) -> LoadedModel:
        try:
            return _load_onnx(p)
        except ArtifactError:
            raise UserError(f"{p}: neither a model artifact (.safetensors) nor an ONNX model") from None

    return try_onnx


def onnx_macs(path: str | os.PathLike, size: tuple[int, int, int]) -> int | None:
    """MACs per image counted from the graph: Conv (output elements x input channels per group x
    kernel area), Gemm / MatMul (output elements x inner dimension), and their quantized forms.
    Shapes come from ONNX shape inference at batch 1 and ``size``; ``None`` if that fails."""
    import onnx
    from onnx import shape_inference

    try:
        proto = onnx.load(str(path), load_external_data=False)
        init_names = {i.name for i in proto.graph.initializer}
        first = [i for i in proto.graph.input if i.name not in init_names][0]
        dims = first.type.tensor_type.shape.dim
        if len(dims) != 4:
            return None
        for d, value in zip(dims, (1, *size)):
            d.Clear()
            d.dim_value = int(value)
        inferred = shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:  # a graph shape inference cannot handle: leave the column empty
        return None
    shapes: dict[str, list[int]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        d = vi.type.tensor_type.shape.dim
        if d and all(x.HasField("dim_value") for x in d):
            shapes[vi.name] = [x.dim_value for x in d]
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    weight_input = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "Gemm": 1, "MatMul": 1,
                    "MatMulInteger": 1, "QLinearMatMul": 3}
    total = 0
    for node in inferred.graph.node:
        if node.op_type not in weight_input:
            continue
        out = shapes.get(node.output[0])
        w = shapes.get(node.input[weight_input[node.op_type]])
        if out is None or w is None:
            return None
        out_elems = int(np.prod(out[1:])) if len(out) > 1 else int(np.prod(out))
        if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
            total += out_elems * int(np.prod(w[1:]))
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            total += out_elems * (w[1] if trans_b else w[0])
        else:
            total += out_elems * w[-2]
    return total


# --------------------------------------------------------------------------------------------
# accuracy on a data set


def _predict_all(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int = 64) -> np.ndarray:
    return np.concatenate([predict(images[i:i + batch]) for i in range(0, len(images), batch)])


def _decisions(logits: np.ndarray, task: str) -> np.ndarray:
    return logits.argmax(1) if task == "multiclass" else (logits > 0)


def _accuracy(logits: np.ndarray, targets: np.ndarray, task: str) -> float:
    """Top-1 (multiclass) or micro-F1 at probability 0.5 (multilabel)."""
    if task == "multiclass":
        return float((logits.argmax(1) == targets).mean())
    pred, truth = logits > 0, targets > 0.5
    tp = float((pred & truth).sum())
    denom = float(pred.sum() + truth.sum())
    return 2 * tp / denom if denom else 1.0


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of samples on which two models make the same decision (same top-1 class, or the
    same predicted label set)."""
    if a.ndim == 1:
        return float((a == b).mean())
    return float((a == b).all(axis=1).mean())


# --------------------------------------------------------------------------------------------
# the full comparison


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


def _data_metrics(variants: list[Variant], spec: str, limit: int | None, seed: int,
                  runners: dict[str, Any], input_size: int | None = None) -> dict[str, dict[str, Any]]:
    """Accuracy of every variant on the test split of ``spec`` at its training resolution (from
    its metadata; ``input_size`` only for models without) and agreement with the first."""
    from .data import load_data

    bundles: dict[tuple, Any] = {}
    out: dict[str, dict[str, Any]] = {}
    decisions: dict[str, np.ndarray] = {}
    for v in variants:
        meta = v.meta
        side = int(meta.input_size[-1]) if meta is not None else v.timing_size(input_size)[-1]
        key = (side, tuple(meta.mean) if meta else None, tuple(meta.std) if meta else None)
        if key not in bundles:
            kw = {"mean": meta.mean, "std": meta.std} if meta is not None else {}
            bundle = load_data(spec, image_size=side, seed=seed, **kw)
            split = bundle.test if len(bundle.test) else bundle.val
            n = len(split) if limit is None else min(limit, len(split))
            xs, ys = zip(*(split[i] for i in range(n)))
            import torch

            bundles[key] = (bundle, torch.stack(list(xs)).numpy().astype(np.float32),
                            np.stack([np.asarray(y) for y in ys]))
        bundle, images, targets = bundles[key]
        task = meta.task if meta is not None else bundle.task
        logits = _predict_all(runners[v.name].predict, images)
        if logits.shape[1] != len(bundle.labels):
            out[v.name] = {"accuracy": None, "agreement": None, "samples": len(images),
                           "note": f"{logits.shape[1]} outputs vs {len(bundle.labels)} classes in {spec}"}
            continue
        decisions[v.name] = _decisions(logits, task)
        base = decisions.get(variants[0].name)
        out[v.name] = {"accuracy": _accuracy(logits, targets, task), "metric": "top1" if task == "multiclass"
                       else "f1_micro", "samples": int(len(images)),
                       "agreement": _agreement(decisions[v.name], base) if base is not None else None}
    return out


def _unique_names(paths: Sequence[Path]) -> list[str]:
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


def run_benchmark(paths: Sequence[str | os.PathLike], *, batches: Sequence[int] = (1,),
                  threads: Sequence[int] = (1,), input_size: int | None = None, data: str | None = None,
                  data_limit: int | None = None, data_seed: int = 0, compile: bool = False,
                  warmup: int = DEFAULT_WARMUP, min_runs: int = DEFAULT_MIN_RUNS,
                  budget_s: float = DEFAULT_BUDGET_S, ort_spinning: bool = False,
                  progress: Callable[[str], None] | None = None) -> BenchReport:
    """Compare the models in ``paths`` (the first is the baseline) over every batch size x thread
    count. See the module docstring for the method; ``budget_s`` is the timing budget per variant
    per cell (seconds). ``ort_spinning=False`` stops ONNX Runtime's worker threads from
    busy-waiting after each run, which would otherwise steal the cores of the variant timed next."""
    import torch

    from .sysinfo import machine_info

    if not paths:
        raise UserError("give at least one model file")
    for b in batches:
        _check_batch_threads(b, 1)
    for t in threads:
        _check_batch_threads(1, t)
    if min_runs < 1:
        raise UserError(f"--min-runs must be >= 1, got {min_runs}")
    if budget_s < 0:
        raise UserError(f"--budget must be >= 0 seconds, got {budget_s}")
    if input_size is not None and not 8 <= int(input_size) <= 4096:
        raise UserError(f"--input-size must be between 8 and 4096, got {input_size}")
    say = progress or (lambda _msg: None)
    paths = [Path(p) for p in paths]
    names = _unique_names(paths)
    variants: list[Variant] = []
    for p, n in zip(paths, names):
        v = load_variant(p, n)
        variants.append(v)
        if compile and v.model is not None:
            variants.append(Variant(name=f"{n} [compile]", path=p, engine="pytorch.compile",
                                    file_bytes=v.file_bytes, stored_bytes=v.stored_bytes, params=v.params,
                                    meta=v.meta, model=v.model, _macs=v._macs))
    report_warnings = [w for v in variants for w in v.warnings]
    for w in report_warnings:
        warnings.warn(w, stacklevel=2)
    sizes = {v.name: v.timing_size(input_size) for v in variants}
    if len(set(sizes.values())) > 1:
        msg = "variants are timed at different input sizes (" + ", ".join(
            f"{n}: {s[1]}x{s[2]}" for n, s in sizes.items()) + "); pass --input-size to compare like for like"
        report_warnings.append(msg)
        warnings.warn(msg, stacklevel=2)
    for v in variants:
        for b in batches:
            v.check_batch(b)
    cores = os.cpu_count() or 1
    for t in threads:
        if t > cores:
            report_warnings.append(f"{t} threads on a machine with {cores} logical CPUs: oversubscribed")

    machine = machine_info()
    load = machine.get("load_average")
    if load and load[0] > machine["usable_cores"]:
        report_warnings.append(f"busy machine: load average {load[0]:.1f} on {machine['usable_cores']} usable "
                               "cores; absolute times are unreliable, compare the ratios")
    torch_threads_before = torch.get_num_threads()
    results: list[dict[str, Any]] = []
    metrics: dict[str, dict[str, Any]] = {}
    try:
        ort_runners: dict[tuple[str, int], OnnxRunner] = {}
        torch_runners: dict[str, TorchRunner] = {}

        def runner_for(v: Variant, t: int):
            if v.is_onnx:
                key = (v.name, t)
                if key not in ort_runners:
                    ort_runners[key] = OnnxRunner(v.onnx_path, t, spinning=ort_spinning)
                return ort_runners[key]
            if v.name not in torch_runners:
                torch_runners[v.name] = TorchRunner(v.model, compile=v.engine == "pytorch.compile")
            return torch_runners[v.name]

        if data:
            say(f"accuracy on {data} ...")
            torch.set_num_threads(max(threads))
            metrics = _data_metrics(variants, data, data_limit, data_seed,
                                    {v.name: runner_for(v, max(threads)) for v in variants}, input_size)
        for t in threads:
            torch.set_num_threads(t)
            for b in batches:
                say(f"timing batch {b}, {t} thread(s): {len(variants)} variants interleaved ...")
                runners = []
                for v in variants:
                    r = runner_for(v, t)
                    r.set_input(_random_images(b, sizes[v.name]))
                    runners.append(r)
                samples = measure_interleaved(runners, warmup=warmup, min_runs=min_runs, budget_s=budget_s)
                # A runner object can be shared (same torch module) only across cells, never
                # within one, so samples[i] belongs to variants[i].
                cell = [LatencyStats.from_seconds(s, b, t) for s, v in zip(samples, variants)]
                base = cell[0]
                for v, st in zip(variants, cell):
                    size = sizes[v.name]
                    macs = v.macs(size)
                    row = {"model": v.name, "engine": v.engine, "batch": b, "threads": t,
                           "input": f"{size[1]}x{size[2]}", **st.to_dict(),
                           "speedup": base.p50_ms / st.p50_ms if st.p50_ms > 0 else None,
                           "latency_ratio": st.p50_ms / base.p50_ms if base.p50_ms > 0 else None,
                           "gmacs_per_s": (macs * b / (st.p50_ms / 1000.0) / 1e9) if macs else None}
                    results.append(row)
    finally:
        torch.set_num_threads(torch_threads_before)
    machine["load_average_end"] = machine_info().get("load_average")

    base = variants[0]
    base_macs = base.macs(sizes[base.name])
    static = []
    for v in variants:
        size = sizes[v.name]
        macs = v.macs(size)
        m = metrics.get(v.name, {})
        static.append({
            "model": v.name, "path": str(v.path), "engine": v.engine, "arch": v.meta.arch if v.meta else None,
            "has_metadata": v.meta is not None, "file_bytes": v.file_bytes, "stored_bytes": v.stored_bytes,
            "size_ratio": v.file_bytes / base.file_bytes, "params": v.params,
            "params_ratio": (v.params / base.params) if v.params and base.params else None,
            "input": f"{size[1]}x{size[2]}", "macs": macs,
            "macs_ratio": (macs / base_macs) if macs and base_macs else None,
            "accuracy": m.get("accuracy"), "accuracy_metric": m.get("metric"), "agreement": m.get("agreement"),
            "eval_samples": m.get("samples"), "eval_note": m.get("note"),
        })
    config = {"models": [str(p) for p in paths], "batches": list(batches), "threads": list(threads),
              "input_size": input_size, "data": data, "data_limit": data_limit, "compile": compile,
              "warmup": warmup, "min_runs": min_runs, "budget_s": budget_s, "ort_spinning": ort_spinning,
              "interleaved": True, "throughput": "images/s at the median latency",
              "latency": "ms per forward pass of one batch"}
    return BenchReport(machine=machine, config=config, variants=static, results=results,
                       warnings=report_warnings)


# --------------------------------------------------------------------------------------------
# output: terminal tables, JSON, CSV, PNG


def format_report(report: BenchReport) -> str:
    """Two terminal tables: the variants (size, params, MACs, accuracy) and the latency cells."""
    from .report import format_table, human_bytes, human_count
    from .sysinfo import describe_machine

    static_rows = []
    for v in report.variants:
        row = {"model": v["model"], "engine": v["engine"], "size": human_bytes(v["file_bytes"]),
               "x size": _ratio(v["size_ratio"]),
               "params": human_count(v["params"]) if v["params"] is not None else None,
               "MACs": human_count(v["macs"]) if v["macs"] is not None else None, "input": v["input"]}
        if any(x["stored_bytes"] is not None for x in report.variants):
            row["stored"] = human_bytes(v["stored_bytes"]) if v["stored_bytes"] is not None else None
        if report.config.get("data"):
            row["acc"] = _pct(v["accuracy"])
            row["agree"] = _pct(v["agreement"])
        static_rows.append(row)
    cell_rows = []
    for r in report.results:
        cell_rows.append({"model": r["model"], "engine": r["engine"], "batch": r["batch"], "thr": r["threads"],
                          "p50 ms": round(r["p50_ms"], 2), "p90 ms": round(r["p90_ms"], 2),
                          "p99 ms": round(r["p99_ms"], 2), "IQR ms": round(r["iqr_ms"], 2),
                          "img/s": round(r["throughput"], 1), "speedup": _ratio(r["speedup"]),
                          "GMAC/s": round(r["gmacs_per_s"], 2) if r["gmacs_per_s"] else None, "runs": r["runs"]})
    parts = [f"machine: {describe_machine(report.machine)}", "", format_table(static_rows), "",
             format_table(cell_rows),
             "", "speedup = baseline p50 / p50 (baseline: first model, same batch and threads); "
                 "img/s at the median latency"]
    parts += [f"warning: {w}" for w in report.warnings]
    return "\n".join(parts)


def _ratio(v: float | None) -> str | None:
    return None if v is None else f"{v:.2f}x"


def _pct(v: float | None) -> str | None:
    return None if v is None else f"{100 * v:.1f}%"


CSV_COLUMNS = ("model", "engine", "batch", "threads", "input", "runs", "p50_ms", "p90_ms", "p99_ms",
               "mean_ms", "std_ms", "iqr_ms", "min_ms", "max_ms", "throughput", "speedup", "latency_ratio",
               "gmacs_per_s", "file_bytes", "stored_bytes", "size_ratio", "params", "params_ratio", "macs",
               "macs_ratio", "accuracy", "agreement")


def write_report(report: BenchReport, prefix: str | os.PathLike, *, plot: bool = True) -> list[Path]:
    """Write ``prefix``.json, ``prefix``.csv and (with ``plot``) ``prefix``.png; return the paths."""
    from .io import atomic_path, write_json

    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    json_path = prefix.with_name(prefix.name + ".json")
    csv_path = prefix.with_name(prefix.name + ".csv")
    write_json(json_path, report.to_dict())
    static = {v["model"]: v for v in report.variants}
    with atomic_path(csv_path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
            w.writeheader()
            for r in report.results:
                s = static[r["model"]]
                w.writerow({**{k: s.get(k) for k in CSV_COLUMNS if k in s}, **r})
    written = [json_path, csv_path]
    if plot:
        png = prefix.with_name(prefix.name + ".png")
        plot_report(report, png)
        written.append(png)
    return written


def plot_report(report: BenchReport, path: str | os.PathLike) -> Path:
    """Median latency per image vs accuracy (or MACs, without --data) and vs file size. Colour =
    model, marker = (batch, threads) cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, NullFormatter

    from .io import atomic_path

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
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def format_latency(stats: LatencyStats) -> str:
    """One line: 'p50 12.3 ms (p90 13.0, p99 15.2, IQR 0.4; 81.3 img/s, 30 runs)'."""
    return (f"p50 {stats.p50_ms:.2f} ms (p90 {stats.p90_ms:.2f}, p99 {stats.p99_ms:.2f}, IQR {stats.iqr_ms:.2f}; "
            f"{stats.throughput:.1f} img/s, {stats.runs} runs, batch {stats.batch}, {stats.threads} thr)")
