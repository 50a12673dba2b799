"""The quantize stage: :class:`~compress.quantize.config.QuantizeConfig` →
:func:`quantize_artifact` → :class:`QuantizeResult` (INT8 modes; ``--kmeans-bits`` is
:func:`compress.quantize.kmeans.kmeans_artifact`).

    result = quantize_artifact("base.onnx", "base.int8.onnx", QuantizeConfig(int8=True))
    result.chosen["label"], result.chosen["speedup"], result.agreement

The INT8 output is an ONNX graph with the input's metadata (labels, preprocessing) and one more
history record, so ``compress serve`` / ``compress bench`` / any ONNX Runtime user run it as is.

Quantization-aware training (``qat``: auto | on | off, :mod:`compress.quantize.qat`): when no
post-training candidate reaches ``min_agreement`` and the input is a ``.safetensors`` artifact
(auto), or always (on), the model is fine-tuned with the fastest structure's INT8 simulated,
exported and quantized by ONNX Runtime with that structure and MinMax ranges; the result is one
more candidate, scored against the fp32 input's decisions like the others. ``result.qat`` (JSON
and history: ``qat``) says whether it was needed, whether it ran, why, and the agreement before
and after.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import UserError
from ..io import atomic_path, check_outputs, sidecar, write_json
from .config import CALIBRATIONS, FORMATS, TYPES, QuantizeConfig

Log = Callable[[str], None]


@dataclass
class QuantizeResult:
    """What the INT8 search tried, what it chose and what that cost."""

    mode: str
    source: str
    output: Path | None
    report_path: Path | None
    trials: list[dict[str, Any]]
    chosen: dict[str, Any] | None
    fp32_ms: float | None
    timing: dict[str, Any]
    data: dict[str, Any]
    agreement: float | None = None
    fp32_test: float | None = None
    int8_test: float | None = None
    test_agreement: float | None = None
    fp32_bytes: int | None = None
    int8_bytes: int | None = None
    notes: list[str] = field(default_factory=list)
    sensitivity: list[dict[str, Any]] = field(default_factory=list)
    qat: dict[str, Any] | None = None  # quantization-aware training: needed?, ran?, why, agreement before/after
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"stage": "quantize", "mode": self.mode, "source": self.source,
                "output": str(self.output) if self.output else None, "chosen": self.chosen,
                "fp32_p50_ms": self.fp32_ms, "timing": self.timing, "data": self.data,
                "agreement": self.agreement, "fp32_test_accuracy": self.fp32_test,
                "int8_test_accuracy": self.int8_test, "test_agreement": self.test_agreement,
                "fp32_bytes": self.fp32_bytes, "int8_bytes": self.int8_bytes, "trials": self.trials,
                "sensitivity": self.sensitivity, "qat": self.qat, "notes": self.notes, "seconds": self.seconds,
                "config": self.config}


def _axis(value: str, choices: tuple[str, ...]) -> list[str]:
    return list(choices) if value == "auto" else [value]


def _onnx_input(src: Path, work: Path, log: Log) -> tuple[Path, Any]:
    """The ONNX graph to quantize and its metadata: ``src`` itself, or ``src`` (.safetensors)
    exported into ``work``."""
    from ..formats import open_model_file

    loaded = open_model_file(src)
    if loaded.onnx_path is not None:
        return Path(loaded.onnx_path), loaded.meta
    from ..export import export_onnx

    log(f"exporting {src} to ONNX first ...")
    path = work / "fp32.onnx"
    export_onnx(loaded.model, loaded.meta, path)
    return path, loaded.meta


def _accuracy(logits: np.ndarray, targets: np.ndarray, task: str) -> float:
    from ..bench.accuracy import accuracy

    return accuracy(logits, targets, task)


def _history_entry(meta, cfg: QuantizeConfig, result: QuantizeResult):
    chosen = result.chosen or {}
    params = {"mode": result.mode, "runtime": "onnxruntime",
              **{k: chosen.get(k) for k in ("format", "types", "per_channel", "calibration", "bias_corrected",
                                            "exclude")},
              "calibration_data": result.data, "min_agreement": cfg.min_agreement,
              "qat": result.qat and {k: v for k, v in result.qat.items() if k != "run"}}
    metrics = {"agreement": result.agreement, "test_accuracy": result.int8_test,
               "fp32_test_accuracy": result.fp32_test, "speedup": chosen.get("speedup"),
               "p50_ms": chosen.get("p50_ms"), "timing": result.timing}
    meta.add_history("quantize", params={k: v for k, v in params.items() if v is not None}, metrics=metrics)


def _write(src_graph: Path, out: Path, meta, cfg: QuantizeConfig, result: QuantizeResult) -> None:
    import onnx

    from ..onnx_meta import set_onnx_meta

    proto = onnx.load(str(src_graph))
    proto.producer_name = "compress"
    if meta is not None:
        _history_entry(meta, cfg, result)
        set_onnx_meta(proto, meta)
    with atomic_path(out) as tmp:
        onnx.save(proto, str(tmp))


def quantize_artifact(model_path: str | os.PathLike, output: str | os.PathLike, config: QuantizeConfig, *,
                      log: Log = lambda msg: None) -> QuantizeResult:
    """INT8-quantize ``model_path`` (.onnx, or .safetensors exported first) into ``output``
    (.onnx) plus its JSON report. Raises :class:`~compress.quantize.int8.QuantizationRefused`
    (writing nothing) when no candidate reaches ``min_agreement``."""
    from ..runtime import OnnxRunner, resolve_input_size
    from ..sysinfo import usable_cores
    from . import int8
    from .calib import quantization_data

    cfg = config.validate()
    if cfg.mode() == "kmeans":
        raise UserError("k-means weight sharing is kmeans_artifact's job (compress.quantize.kmeans)")
    if cfg.qat == "on" and cfg.mode() != "int8":
        raise UserError("--qat on fine-tunes for static INT8; give --int8")
    start = time.perf_counter()
    src, out = Path(model_path), Path(output)
    if out.suffix.lower() != ".onnx":
        raise UserError(f"output {out} should end in .onnx (INT8 is an ONNX Runtime graph)")
    check_outputs([out, sidecar(out)], [src])
    threads = cfg.threads or usable_cores()
    with int8.temporary_dir() as tmp:
        work = Path(tmp)
        graph, meta = _onnx_input(src, work, log)
        has_model = graph != src  # a PyTorch artifact, exported into ``work``: QAT can fine-tune it
        if cfg.qat == "on" and not has_model:
            raise UserError(f"{src} is an ONNX graph; quantization-aware training (--qat on) fine-tunes the "
                            "PyTorch model: give its .safetensors artifact")
        from ..onnx_graph import is_quantized
        from ..onnx_meta import load_onnx

        proto = load_onnx(graph)
        if is_quantized(proto):
            raise UserError(f"{src} is already quantized; give the fp32 model")
        if meta is None:
            raise UserError(f"{src} has no compress metadata (preprocessing, labels, data set), so INT8 cannot be "
                            "calibrated on the images it will serve; quantize its .safetensors artifact or an ONNX "
                            "file written by `compress export`")
        log("loading calibration and held-out images ...")
        data = quantization_data(meta, cfg.calib, calib_samples=cfg.calib_samples, eval_samples=cfg.eval_samples,
                                 seed=cfg.data_seed, data_root=cfg.data_root, test=cfg.test, sample_seed=cfg.seed)
        pre = work / "pre.onnx"
        notes = int8.preprocess_graph(graph, pre)
        fp32 = OnnxRunner(pre, threads)
        size = resolve_input_size(cfg.input_size, meta_size=meta.input_size, graph_shape=fp32.input_shape,
                                  batch=cfg.batch, source=str(src))
        timing = {"batch": cfg.batch, "threads": threads, "input": f"{size[1]}x{size[2]}", "interleaved": True,
                  "budget_s": cfg.budget}
        if cfg.mode() == "dynamic":
            outcome = _dynamic(pre, data, fp32, size, cfg, threads, work, log)
        else:
            outcome = int8.search(
                pre, data, input_name=fp32.input_name, formats=_axis(cfg.quant_format, FORMATS),
                types=_axis(cfg.types, TYPES), per_channel=[v == "on" for v in _axis(cfg.per_channel, ("on", "off"))],
                calibrations=_axis(cfg.calibration, CALIBRATIONS), exclude=cfg.exclude,
                min_agreement=cfg.min_agreement, max_exclude=cfg.max_exclude, size=size, batch=cfg.batch,
                threads=threads, budget_s=cfg.budget, work=work, mixed=cfg.mixed,
                bias_correction=[v == "on" for v in _axis(cfg.bias_correction, ("off", "on"))], log=log)
        qat_info = None
        if cfg.mode() == "int8":
            outcome, qat_info = _with_qat(src, meta, cfg, outcome, data, fp32, has_model, threads, work, log)
        result = QuantizeResult(mode=cfg.mode(), source=str(src), output=None, report_path=None,
                                trials=[t.to_dict() for t in outcome.trials],
                                chosen=outcome.chosen.to_dict() if outcome.chosen else None, fp32_ms=outcome.fp32_ms,
                                timing=timing, data=data.source, notes=notes + outcome.notes,
                                sensitivity=[{"node": n, "sqnr_drop_db": round(d, 2)} for n, d in outcome.sensitivity],
                                config=cfg.to_dict(), fp32_bytes=graph.stat().st_size, qat=qat_info)
        if outcome.chosen is None:
            result.seconds = time.perf_counter() - start
            if qat_info and qat_info["ran"]:
                hint = (f"even after {cfg.qat_epochs} epoch(s) of quantization-aware fine-tuning (QAT agreement "
                        f"{qat_info['agreement_after']:.2%}); nothing written (lower --min-agreement or raise "
                        "--qat-epochs)")
            else:
                qat_hint = (", or quantize the .safetensors artifact so quantization-aware fine-tuning can run"
                            if not has_model else ", or --qat auto" if cfg.qat == "off" else "")
                hint = f"; nothing written (lower --min-agreement or raise --max-exclude{qat_hint})"
            raise int8.QuantizationRefused(
                f"no INT8 candidate kept {cfg.min_agreement:.2%} top-1 agreement with the fp32 model on "
                f"{len(data.eval)} held-out images{' ' if hint[0] != ';' else ''}{hint}", result)
        chosen = outcome.chosen
        result.agreement = chosen.agreement
        if data.test is not None:
            q = OnnxRunner(chosen.path, threads)
            fl, ql = int8.predict(fp32, data.test), int8.predict(q, data.test)
            result.fp32_test = _accuracy(fl, data.test_targets, data.task)
            result.int8_test = _accuracy(ql, data.test_targets, data.task)
            a, b = int8.decisions(fl, data.task), int8.decisions(ql, data.task)
            result.test_agreement = int8.agreement(a, b)
        result.seconds = time.perf_counter() - start
        _write(chosen.path, out, meta, cfg, result)
    result.output, result.int8_bytes = out, out.stat().st_size
    result.report_path = write_json(sidecar(out), result.to_dict())
    return result


def _with_qat(src: Path, meta, cfg: QuantizeConfig, outcome, data, fp32, has_model: bool, threads: int, work: Path,
              log: Log):
    """The search ``outcome`` after quantization-aware training when :func:`qat.plan` says so:
    the QAT candidate is added to the trials and chosen when it passes (with ``--qat on`` it is
    preferred to a passing post-training one). Returns (outcome, the ``qat`` record)."""
    from . import int8, qat

    info = qat.plan(cfg.qat, outcome, min_agreement=cfg.min_agreement, has_model=has_model)
    target = qat.target_structure(outcome, cfg.exclude) if info["ran"] else None
    if target is None:
        if info["ran"]:
            info.update(ran=False, why=info["why"] + "; no INT8 structure could be built to fine-tune for")
        return outcome, info
    log(f"quantization-aware training ({info['why']}) for {int8.structure_label(target.candidate)} ...")
    reference = int8.decisions(int8.predict(fp32, data.eval), data.task)
    before = qat.structure_agreement(outcome, target)
    trial, run = qat.qat_candidate(src, cfg, meta, target, data, reference, input_name=fp32.input_name,
                                   threads=threads, work=work, log=log)
    outcome.trials.append(trial)
    info.update(structure=trial.candidate.label(), agreement_before=before,
                agreement_after=trial.agreement, passed=trial.status == "passed", epochs=run.epochs,
                steps=run.steps, distill=run.distill, loss=run.loss, run=run.to_dict())
    if trial.status == "passed":
        if outcome.chosen is not None:
            outcome.chosen.status = "passed"
            if outcome.chosen.candidate.structure() == trial.candidate.structure() and \
                    outcome.chosen.agreement > trial.agreement:
                outcome.notes.append(f"--qat on: wrote the QAT candidate ({trial.agreement:.2%}) although "
                                     f"post-training {outcome.chosen.candidate.label()} agreed more "
                                     f"({outcome.chosen.agreement:.2%})")
        outcome.chosen = trial
    elif outcome.chosen is not None:
        outcome.notes.append(f"the QAT candidate ({trial.agreement:.2%}) is below --min-agreement; kept the "
                             "post-training one")
    return outcome, info


def _dynamic(pre: Path, data, fp32, size, cfg: QuantizeConfig, threads: int, work: Path, log: Log):
    """Dynamic INT8 (no calibration): one candidate, timed and scored like the static ones."""
    from . import int8

    cand = int8.Candidate("dynamic", "u8s8", cfg.per_channel != "off", calibration="none")
    trial = int8.Trial(cand, path=work / "dynamic.onnx")
    log("quantizing weights to INT8 (dynamic) ...")
    try:
        int8.quantize_dynamic_graph(pre, trial.path, per_channel=cand.per_channel)
    except Exception as e:  # the quantizer raises assorted types on unsupported graphs
        raise UserError(f"ONNX Runtime's dynamic quantizer failed on this graph: {str(e).splitlines()[0][:200]}") \
            from None
    reference = int8.decisions(int8.predict(fp32, data.eval), data.task)
    got = int8.decisions(int8.predict(int8.OnnxRunner(trial.path, threads), data.eval), data.task)
    trial.agreement = int8.agreement(got, reference)
    base, st = int8.time_models([pre, trial.path], size, batch=cfg.batch, threads=threads, budget_s=cfg.budget)
    trial.p50_ms, trial.speedup = st.p50_ms, base.p50_ms / st.p50_ms
    passed = trial.agreement >= cfg.min_agreement
    trial.status = "chosen" if passed else "below threshold"
    return int8.SearchOutcome(trials=[trial], chosen=trial if passed else None, fp32_ms=base.p50_ms)

