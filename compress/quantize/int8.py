"""INT8 with ONNX Runtime, chosen by measurement on this CPU (torch-free).

The search, in order of cost:

1. the graph is pre-processed (``onnxruntime.quantization.quant_pre_process``: symbolic shape
   inference and ONNX Runtime's graph optimisations) — without it QDQ gave no speed-up here;
2. every *structure* left open by the options (QDQ/QOperator x S8S8/U8S8 x per-channel or not)
   is quantized with MinMax ranges and timed, interleaved with the fp32 model, on random inputs at
   the timing size (latency does not depend on the calibration method, only on the structure);
3. from the fastest structure on, each calibration method (MinMax, Entropy, Percentile; ranges
   computed once per method and cached) is scored by top-1 agreement with the fp32 model on the
   held-out images; the first structure with a candidate at or above the threshold wins, with the
   most agreeing of its passing calibrations. With ``bias_correction`` each calibration is also
   scored on a copy of the float graph whose convolution biases absorb the mean output shift
   that INT8 weight rounding causes (:mod:`.biascorr`; measured on the Fashion-MNIST MobileNetV2
   under per-tensor QOperator U8S8: 98.78% -> 99.24% top-1 agreement on the 10,000 test images,
   test accuracy 93.31% -> 93.45% against 93.33% in fp32);
4. if none passes: the quantizable nodes whose output loses the most signal to quantization
   (the drop in SQNR from their input to their output, QDQ emulation against fp32) are kept in
   float, 1, 2, 4, ... up to ``max_exclude`` of them, and the best structure is tried again;
5. if still none passes, :class:`QuantizationRefused` — and nothing is written;
6. with ``mixed``: the chosen candidate is timed again beside copies of it that keep the
   convolutions of the highest output resolution (then the two highest) in float. Those layers
   carry the largest activations and the fewest MACs per value, so quantizing and dequantizing
   them can cost more than INT8 saves (measured here: a 0.5-pruned MobileNetV2 at 224x224, QDQ
   U8S8 per-channel, ran 1.36 ms all-INT8 and 1.23 ms with its three 112x112 convolutions in
   float, 1.44 ms with the 56x56 ones too; the Fashion-MNIST one under per-tensor QDQ ran 1.38 ms
   all-INT8 and 1.57 ms with its 112x112 layers in float). A copy wins only when it is faster by
   ``MIXED_MARGIN`` and still passes the agreement threshold.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import UserError
from ..runtime import DEFAULT_BLOCK_S, LatencyStats, OnnxRunner, measure_interleaved, random_images
from .calib import ArrayReader, QuantData

QUANTIZABLE_OPS = ("Conv", "Gemm", "MatMul")
MIXED_LEVELS = 2  # resolution levels tried in float by the mixed step (highest first)
MIXED_MARGIN = 0.03  # a mixed copy must be this much faster than all-INT8 to be chosen


class QuantizationRefused(UserError):
    """No INT8 candidate reached the agreement threshold; nothing was written. ``result`` holds
    what was tried."""

    exit_code = 1

    def __init__(self, message: str, result: Any = None):
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class Candidate:
    """One INT8 configuration."""

    format: str  # qdq | qoperator
    types: str  # s8s8 | u8s8 (activations, weights)
    per_channel: bool
    calibration: str = "minmax"
    exclude: tuple[str, ...] = ()
    bias_corrected: bool = False  # quantized from the bias-corrected float graph (biascorr)

    def structure(self) -> tuple[str, str, bool]:
        return (self.format, self.types, self.per_channel)

    def label(self) -> str:
        text = f"{structure_label(self)} {self.calibration}{' +bias corr.' if self.bias_corrected else ''}"
        return text + (f" (-{len(self.exclude)} nodes)" if self.exclude else "")


@dataclass
class Trial:
    """A candidate and what was measured of it."""

    candidate: Candidate
    status: str = "untried"  # chosen | passed | below threshold | failed | not scored | untried
    p50_ms: float | None = None
    speedup: float | None = None
    agreement: float | None = None
    note: str = ""
    path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self.candidate)
        d["exclude"] = list(self.candidate.exclude)
        return {"label": self.candidate.label(), **d, "status": self.status, "p50_ms": self.p50_ms,
                "speedup": self.speedup, "agreement": self.agreement, "note": self.note}


def structure_label(cand: Candidate) -> str:
    """``cand``'s structure: format, types and weight granularity."""
    return f"{cand.format.upper()} {cand.types.upper()} {'per-channel' if cand.per_channel else 'per-tensor'}"


def structures(formats: Sequence[str], types: Sequence[str], per_channel: Sequence[bool]) -> list[Candidate]:
    """Every structural candidate (MinMax calibration), in a fixed order: QDQ before QOperator,
    S8S8 (ONNX Runtime's recommended first try) before U8S8, per-channel first."""
    return [Candidate(f, t, pc) for f in formats for t in types for pc in per_channel]


def _ort_types(types: str):
    from onnxruntime.quantization import QuantType

    act, weight = types[:2], types[2:]
    return ({"s8": QuantType.QInt8, "u8": QuantType.QUInt8}[act], {"s8": QuantType.QInt8, "u8": QuantType.QUInt8}[weight])


def _calib_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[name]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantizer logs (and prints progress bars of) every step; keep the terminal
    to our own messages."""
    import io
    import warnings

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def preprocess_graph(src: Path, dst: Path) -> list[str]:
    """``quant_pre_process`` (symbolic shape inference + ONNX Runtime graph optimisation) of
    ``src`` into ``dst``; returns notes. Falls back to the plain ONNX shape inference when the
    symbolic one fails, and to a copy of ``src`` when both do."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    attempts = [dict(), dict(skip_symbolic_shape=True)]
    errors = []
    for kw in attempts:
        try:
            with _quiet():
                quant_pre_process(str(src), str(dst), **kw)
            return [] if not kw else ["graph pre-processed without symbolic shape inference (it failed)"]
        except Exception as e:  # the pre-processor raises assorted exception types
            errors.append(str(e).splitlines()[0] if str(e) else type(e).__name__)
    dst.write_bytes(src.read_bytes())
    return [f"graph pre-processing failed ({errors[-1][:160]}); quantized the graph as it is"]


def quantize_candidate(src: Path, dst: Path, cand: Candidate, data: QuantData, input_name: str,
                       cache_dir: Path) -> None:
    """Static INT8 of ``src`` into ``dst`` with ``cand``'s settings, activation ranges from
    ``data.calib`` (computed once per calibration method, then read from ``cache_dir``)."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    act, weight = _ort_types(cand.types)
    cache = cache_dir / f"ranges-{cand.calibration}.json"
    if cand.calibration == "entropy" and not cache.is_file():
        entropy_ranges(src, input_name, data.calib, cache)
    reader = None if cache.is_file() else ArrayReader(input_name, data.calib)
    # Not "CalibMaxIntermediateOutputs": in onnxruntime 1.32 MinMaxCalibrater.collect_data clears
    # the collected batches when that count is reached without merging them first (ranges from
    # the last partial chunk only, or "No data is collected."). MinMax keeps per-batch minima and
    # maxima only; Entropy/Percentile keep every activation of every calibration image in memory
    # (digits MobileNetV2, 64 images: 1.4 GB peak).
    extra = {"ActivationSymmetric": cand.types == "s8s8", "WeightSymmetric": True}
    if cand.calibration == "percentile":
        extra["CalibPercentile"] = 99.999
    with _quiet():
        quantize_static(str(src), str(dst), reader,
                        quant_format=QuantFormat.QDQ if cand.format == "qdq" else QuantFormat.QOperator,
                        op_types_to_quantize=None, per_channel=cand.per_channel, reduce_range=False,
                        activation_type=act, weight_type=weight, nodes_to_exclude=list(cand.exclude) or None,
                        calibrate_method=_calib_method(cand.calibration), extra_options=extra,
                        calibration_cache_path=str(cache))


ENTROPY_BINS = 2048  # histogram bins of the entropy calibration (TensorRT's choice), 128 quantized bins


def entropy_ranges(src: Path, input_name: str, images: np.ndarray, cache: Path) -> None:
    """Entropy (KL-divergence) activation ranges of ``src`` on ``images``, written to ``cache`` in the
    form ``quantize_static(calibration_cache_path=...)`` reads. ``quantize_static`` itself cannot
    set the histogram size, and its default of 128 bins equals the 128 quantized bins: the only
    threshold it can try is the whole range, so its "Entropy" is MinMax."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data

    with tempfile.TemporaryDirectory() as tmp, _quiet():
        calibrator = create_calibrator(Path(src), None, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.Entropy,
                                       extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": 128})
        calibrator.collect_data(ArrayReader(input_name, images))
        save_tensors_data(calibrator.compute_data(), cache)


def quantize_dynamic_graph(src: Path, dst: Path, per_channel: bool = True) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(str(src), str(dst), per_channel=per_channel, weight_type=QuantType.QInt8)


# ----------------------------------------------------------------------------- measurement

def predict(runner: OnnxRunner, images: np.ndarray, batch: int = 64) -> np.ndarray:
    return np.concatenate([runner.predict(images[i:i + batch]) for i in range(0, len(images), batch)])


def decisions(logits: np.ndarray, task: str) -> np.ndarray:
    from ..bench.accuracy import decisions as decide

    return decide(logits, task)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    from ..bench.accuracy import agreement as agree

    return agree(a, b)


def time_models(paths: Sequence[Path], size: tuple[int, int, int], *, batch: int, threads: int,
                budget_s: float) -> list[LatencyStats]:
    """p50 & co. of each model under ONNX Runtime, timed interleaved in blocks on one random batch
    (threads spinning within a run only: see :mod:`compress.runtime`)."""
    runners = []
    for p in paths:
        r = OnnxRunner(p, threads, spinning="run")
        r.set_input(random_images(batch, size))
        runners.append(r)
    samples = measure_interleaved(runners, warmup=3, min_runs=10, budget_s=budget_s, block_s=DEFAULT_BLOCK_S)
    return [LatencyStats.from_seconds(s, batch, threads) for s in samples]


def sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (``inf`` when equal)."""
    noise = float(np.sum((reference.astype(np.float64) - approx) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    if noise == 0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-30) / noise)


def _with_outputs(path: Path, names: Sequence[str], dst: Path) -> None:
    """A copy of ``path`` whose graph also outputs the float tensors ``names``."""
    import onnx
    from onnx import TensorProto, helper

    proto = onnx.load(str(path))
    have = {o.name for o in proto.graph.output}
    for n in names:
        if n not in have:
            proto.graph.output.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, None))
    onnx.save(proto, str(dst))


def _unoptimised_session(path: Path):
    """An ONNX Runtime session that runs ``path`` as written (no fusion), quietly."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def node_sensitivity(float_path: Path, qdq_path: Path, images: np.ndarray, work: Path) -> list[tuple[str, float]]:
    """Quantizable nodes of the float graph, most sensitive first: (node name, SQNR drop in dB
    from its input to its output), measured by running the float graph and the QDQ graph (as
    emulated, no fusion) on ``images`` with every such node's output exposed."""
    import onnx

    graph = onnx.load(str(float_path)).graph
    nodes = [n for n in graph.node if n.op_type in QUANTIZABLE_OPS and n.name]
    if not nodes:
        return []
    graph_input = graph.input[0].name
    produced = {t for n in onnx.load(str(qdq_path)).graph.node for t in n.output}  # QDQ renames some
    tensors = sorted(({t for n in nodes for t in (n.input[0], n.output[0])} & produced) - {graph_input})
    outputs = {}
    for tag, path in (("float", float_path), ("qdq", qdq_path)):
        exposed = work / f"sensitivity-{tag}.onnx"
        _with_outputs(path, tensors, exposed)
        sess = _unoptimised_session(exposed)
        names = [o.name for o in sess.get_outputs()]
        runs = [sess.run(None, {graph_input: images[i:i + 32]}) for i in range(0, len(images), 32)]
        outputs[tag] = {name: np.concatenate([r[k] for r in runs]) for k, name in enumerate(names)}
    f, q = outputs["float"], outputs["qdq"]

    def sqnr(t: str) -> float:
        if t == graph_input or t not in f or t not in q:
            return 100.0
        return min(100.0, sqnr_db(f[t], q[t]))

    drops = [(n.name, sqnr(n.input[0]) - sqnr(n.output[0])) for n in nodes]
    return sorted(drops, key=lambda d: -d[1])


def quantizable_nodes(path: Path) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type in QUANTIZABLE_OPS]


def resolution_levels(path: Path, size: tuple[int, int, int], work: Path) -> list[tuple[tuple[int, int], list[str]]]:
    """The named convolutions of the float graph ``path`` grouped by the spatial size of their
    output for one input of ``size`` (C, H, W), largest first: ``[((h, w), [node, ...]), ...]``.
    Shapes are read off one run of the graph with every convolution's output exposed."""
    import onnx

    graph = onnx.load(str(path)).graph
    convs = [n for n in graph.node if n.op_type == "Conv" and n.name]
    if not convs:
        return []
    exposed = work / "resolution.onnx"
    _with_outputs(path, [n.output[0] for n in convs], exposed)
    sess = _unoptimised_session(exposed)
    names = [o.name for o in sess.get_outputs()]
    shapes = dict(zip(names, (a.shape for a in sess.run(None, {graph.input[0].name: random_images(1, size)}))))
    levels: dict[tuple[int, int], list[str]] = {}
    for n in convs:
        shape = shapes.get(n.output[0])
        if shape is not None and len(shape) == 4:
            levels.setdefault((int(shape[2]), int(shape[3])), []).append(n.name)
    return sorted(levels.items(), key=lambda kv: -kv[0][0] * kv[0][1])


@dataclass
class SearchOutcome:
    trials: list[Trial]
    chosen: Trial | None
    fp32_ms: float | None
    notes: list[str] = field(default_factory=list)
    sensitivity: list[tuple[str, float]] = field(default_factory=list)


def search(pre: Path, data: QuantData, *, input_name: str, formats: Sequence[str], types: Sequence[str],
           per_channel: Sequence[bool], calibrations: Sequence[str], exclude: Sequence[str], min_agreement: float,
           max_exclude: int, size: tuple[int, int, int], batch: int, threads: int, budget_s: float, work: Path,
           mixed: bool = False, bias_correction: Sequence[bool] = (False,),
           log: Callable[[str], None] = lambda m: None) -> SearchOutcome:
    """The search of the module docstring over the pre-processed float graph ``pre``;
    ``bias_correction`` lists the variants scored per calibration (False: as is, True: the
    bias-corrected graph)."""
    fp32 = OnnxRunner(pre, threads)
    reference = decisions(predict(fp32, data.eval), data.task)
    notes: list[str] = []
    built: dict[Candidate, Trial] = {}
    graphs: dict[bool, tuple[Path, Path]] = {}  # per_channel -> (bias-corrected graph, its range cache)
    means: list[dict] = []

    def source(cand: Candidate) -> tuple[Path, Path]:
        """The float graph ``cand`` quantizes, and the folder of its cached activation ranges."""
        if not cand.bias_corrected:
            return pre, work
        if cand.per_channel not in graphs:
            from . import biascorr

            if not means:
                log(f"measuring mean convolution inputs on {len(data.calib)} images for bias correction ...")
                means.append(biascorr.tap_means(pre, data.calib, work))
            folder = work / f"bias-corrected-{'pc' if cand.per_channel else 'pt'}"
            folder.mkdir(exist_ok=True)
            biascorr.correct_biases(pre, folder / "pre.onnx", means[0], per_channel=cand.per_channel)
            graphs[cand.per_channel] = (folder / "pre.onnx", folder)
        return graphs[cand.per_channel]

    def build(cand: Candidate) -> Trial:
        if cand in built:
            return built[cand]
        trial = Trial(cand, path=work / f"cand-{len(built)}.onnx")
        built[cand] = trial
        try:
            graph, cache = source(cand)
            quantize_candidate(graph, trial.path, cand, data, input_name, cache)
            OnnxRunner(trial.path, 1)  # ONNX Runtime must accept it
        except Exception as e:  # the quantizer and ORT raise assorted types on unsupported graphs
            trial.status, trial.note = "failed", (str(e).splitlines()[0] if str(e) else type(e).__name__)[:160]
        return trial

    def score(trial: Trial) -> None:
        if trial.status == "failed" or trial.agreement is not None:
            return
        trial.agreement = agreement(decisions(predict(OnnxRunner(trial.path, threads), data.eval), data.task),
                                    reference)
        trial.status = "passed" if trial.agreement >= min_agreement else "below threshold"

    fp32_ms: float | None = None  # fp32's p50 in the timing run of the latest trials timed

    def timed(trials: list[Trial]) -> None:
        nonlocal fp32_ms
        live = [t for t in trials if t.status != "failed"]
        if not live:
            return
        log(f"timing fp32 and {len(live)} INT8 structure(s) interleaved ({budget_s:g} s each) ...")
        stats = time_models([pre] + [t.path for t in live], size, batch=batch, threads=threads, budget_s=budget_s)
        base = stats[0].p50_ms
        for t, st in zip(live, stats[1:]):
            t.p50_ms, t.speedup = st.p50_ms, base / st.p50_ms
        fp32_ms = base

    base_cands = [replace(c, exclude=tuple(exclude), bias_corrected=bias_correction[0])
                  for c in structures(formats, types, per_channel)]
    log(f"building {len(base_cands)} INT8 structure(s) with MinMax ranges from {len(data.calib)} images ...")
    shapes = [build(replace(c, calibration=calibrations[0])) for c in base_cands]
    timed(shapes)
    order = sorted((t for t in shapes if t.status != "failed"), key=lambda t: t.p50_ms)
    chosen: Trial | None = None
    for shape in order:
        trials = [build(replace(shape.candidate, calibration=m, bias_corrected=bc))
                  for m in calibrations for bc in bias_correction]
        for t in trials:
            t.p50_ms, t.speedup = shape.p50_ms, shape.speedup  # same structure, same kernels
            score(t)
        log(f"{structure_label(shape.candidate)}: {shape.speedup:.2f}x, agreement " + ", ".join(
            f"{t.candidate.calibration}{' +bias corr.' if t.candidate.bias_corrected else ''} {t.agreement:.2%}"
            for t in trials if t.agreement is not None))
        passing = [t for t in trials if t.status == "passed"]
        if passing:
            chosen = max(passing, key=lambda t: t.agreement)
            break
    sensitivity: list[tuple[str, float]] = []
    if chosen is None and order and max_exclude > 0:
        chosen, sensitivity = _exclusion_fallback(pre, data, order[0], calibrations, built, build, score, timed,
                                                  max_exclude, min_agreement, work, notes, log)
    if chosen is not None and mixed:
        chosen = _mixed_precision(pre, chosen, size, build, score, timed, work, notes, log)
    for t in built.values():
        if t.status == "untried" or (t.status != "failed" and t.agreement is None):
            t.status = "not scored"
            t.note = t.note or "a faster structure passed"
    if chosen is not None:
        chosen.status = "chosen"
    return SearchOutcome(trials=list(built.values()), chosen=chosen, fp32_ms=fp32_ms, notes=notes,
                         sensitivity=sensitivity)


def _exclusion_fallback(pre, data, fastest: Trial, calibrations, built, build, score, timed, max_exclude,
                        min_agreement, work, notes, log):
    """Keep the most sensitive nodes in float, 1, 2, 4, ... of them, on the fastest structure
    with its most agreeing calibration; the first count that passes wins."""
    scored = [t for t in built.values() if t.candidate.structure() == fastest.candidate.structure()
              and t.agreement is not None and not t.candidate.exclude]
    best = max(scored, key=lambda t: t.agreement) if scored else fastest
    qdq = build(replace(best.candidate, format="qdq"))
    if qdq.status == "failed":
        notes.append(f"no sensitivity analysis: the QDQ graph failed ({qdq.note})")
        return None, []
    images = data.eval[:min(len(data.eval), 256)]
    ranking = node_sensitivity(pre, qdq.path, images, work)
    cap = min(max_exclude, len(quantizable_nodes(pre)) // 2)
    counts, k = [], 1
    while k <= cap:
        counts.append(k)
        k *= 2
    if cap and counts[-1] != cap:
        counts.append(cap)
    notes.append(f"no candidate reached {min_agreement:.2%} agreement: trying {best.candidate.label()} with up "
                 f"to {cap} of the most sensitive nodes kept in float")
    log(notes[-1])
    for k in counts:
        cand = replace(best.candidate, exclude=tuple(sorted(set(best.candidate.exclude)
                                                            | {n for n, _ in ranking[:k]})))
        trial = build(cand)
        score(trial)
        log(f"  {k} node(s) in float: agreement {trial.agreement:.2%}" if trial.agreement is not None
            else f"  {k} node(s) in float: failed ({trial.note})")
        if trial.status == "passed":
            timed([trial])
            return trial, ranking
    return None, ranking


def _mixed_precision(pre, chosen: Trial, size, build, score, timed, work, notes, log) -> Trial:
    """Step 6 of the module docstring: ``chosen``, or a copy of it with its highest-resolution
    convolutions in float when that copy is faster by ``MIXED_MARGIN`` and still passes."""
    levels = resolution_levels(pre, size, work)
    total = len(quantizable_nodes(pre))
    copies: list[tuple[str, Trial]] = []
    names: list[str] = []
    for (h, w), level in levels[:min(MIXED_LEVELS, len(levels) - 1)]:  # at least one level stays INT8
        names += level
        if len(names) > total // 2:
            break
        cand = replace(chosen.candidate, exclude=tuple(sorted(set(chosen.candidate.exclude) | set(names))))
        what = f"the {len(names)} convolution(s) at {h}x{w}" + (" and above" if len(copies) else "")
        copies.append((what, build(cand)))
    live = [(what, t) for what, t in copies if t.status != "failed"]
    if not live:
        return chosen
    log(f"timing {chosen.candidate.label()} against {len(live)} cop{'y' if len(live) == 1 else 'ies'} with its "
        "highest-resolution convolutions in float ...")
    timed([chosen] + [t for _, t in live])
    for what, t in sorted(live, key=lambda wt: wt[1].p50_ms):
        if t.p50_ms > chosen.p50_ms * (1 - MIXED_MARGIN):
            break
        score(t)
        if t.status == "passed":
            notes.append(f"kept {what} in float: {t.p50_ms:.3g} ms against {chosen.p50_ms:.3g} ms all-INT8 "
                         f"at {size[1]}x{size[2]}")
            log(notes[-1])
            chosen.status = "passed"
            return t
    for what, t in live:
        t.note = t.note or (f"{what} in float: faster, but below --min-agreement" if t.status == "below threshold"
                            else f"{what} in float: not {MIXED_MARGIN:.0%} faster than all-INT8")
    notes.append(f"all-INT8 kept: no copy with the highest-resolution convolutions in float was "
                 f"{MIXED_MARGIN:.0%} faster and agreeing enough at {size[1]}x{size[2]}")
    log(notes[-1])
    return chosen


def temporary_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="compress-quantize-", dir=os.environ.get("TMPDIR"))
