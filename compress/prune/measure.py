"""What pruning changed, measured: parameters (total and non-zero), MACs, file size, test
accuracy and ONNX Runtime latency of each model, the latencies of all measured models timed
together, interleaved, at the end (so the before/after ratio is fair on a shared CPU)."""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import torch.nn as nn

from ..meta import ModelMeta
from ..runtime import time_onnx_interleaved

LATENCY_BATCH, LATENCY_THREADS = 1, 2


def imagenet_stem_twin(model: nn.Module, meta: ModelMeta) -> tuple[nn.Module, ModelMeta]:
    """The same layer widths (pruned shapes included) and weights built with ``small_input=False``:
    only strides differ, so the state dict loads unchanged. Returns (twin, twin_meta); a model
    without the small-input stem is returned as it is."""
    from ..artifact import load_model, save_model

    if not meta.arch_kwargs.get("small_input"):
        return model, meta
    twin_meta = dataclasses.replace(meta, arch_kwargs={**meta.arch_kwargs, "small_input": False}, history=[])
    with tempfile.TemporaryDirectory(prefix="compress-prune-") as tmp:
        path = Path(tmp) / "twin.safetensors"
        save_model(model, path, twin_meta)
        return load_model(path)


def export_for_timing(model: nn.Module, meta: ModelMeta, size: int, path: Path) -> Path:
    from ..export import export_onnx

    export_onnx(model, meta, path, verify=False, input_size=size)
    return path


def latency_ms(model: nn.Module, meta: ModelMeta, size: int, runs: int, imagenet_stem: bool = False) -> float:
    """Median ONNX Runtime latency (ms) of one model at ``size``, batch 1, 2 threads."""
    if imagenet_stem:
        model, meta = imagenet_stem_twin(model, meta)
    with tempfile.TemporaryDirectory(prefix="compress-prune-") as tmp:
        path = export_for_timing(model, meta, size, Path(tmp) / "model.onnx")
        (stats,) = time_onnx_interleaved([path], size, batch=LATENCY_BATCH, threads=LATENCY_THREADS, runs=runs)
        return stats.p50_ms


class ModelMeasure:
    """Params, MACs, accuracy of a model as one row of the report; each measured model is also
    exported to ONNX in ``workdir`` and the latencies are timed together by :meth:`time_latency`."""

    def __init__(self, meta: ModelMeta, bundle, bench_size: int | None, workdir: Path, *,
                 imagenet_stem: bool = False, runs: int = 50):
        self.meta, self.bundle, self.bench_size, self.workdir = meta, bundle, bench_size, workdir
        self.imagenet_stem, self.runs = imagenet_stem, runs
        self.onnx_paths: list[Path] = []

    def accuracy(self, model: nn.Module) -> dict[str, float]:
        """Primary metric and loss on the test split (empty without a data set)."""
        if self.bundle is None:
            return {}
        from ..evaluate import evaluate, primary_metric, scalar_metrics

        m = scalar_metrics(evaluate(model, self.bundle.test, self.bundle.task, 256, labels=self.bundle.labels))
        key = primary_metric(self.bundle.task)
        return {key: m[key], "loss": m["loss"]}

    def __call__(self, model: nn.Module, file_bytes: int | None) -> dict[str, Any]:
        from models import count_macs, count_params

        from .unstructured import sparsity_report

        rep = sparsity_report(model, [])
        row: dict[str, Any] = {"params": count_params(model), "macs": count_macs(model, tuple(self.meta.input_size)),
                               "nonzero_params": int(round(rep["params"] * (1 - rep["overall"]))),
                               "file_bytes": file_bytes, **self.accuracy(model)}
        if self.bench_size is not None:
            bench_model, bench_meta = imagenet_stem_twin(model, self.meta) if self.imagenet_stem else (model, self.meta)
            path = self.workdir / f"model{len(self.onnx_paths)}.onnx"
            self.onnx_paths.append(export_for_timing(bench_model, bench_meta, self.bench_size, path))
            if self.bench_size != self.meta.input_size[-1] or bench_model is not model:
                row["macs_at_bench_size"] = count_macs(bench_model, (self.meta.input_size[0], self.bench_size,
                                                                     self.bench_size))
        return row

    def time_latency(self, rows: list[dict[str, Any]]) -> None:
        """Fill ``latency_ms`` of ``rows`` (in measurement order), timing all models interleaved."""
        if self.bench_size is None:
            return
        stats = time_onnx_interleaved(self.onnx_paths, self.bench_size, batch=LATENCY_BATCH,
                                      threads=LATENCY_THREADS, runs=self.runs, warmup=10)
        for row, s in zip(rows, stats):
            row["latency_ms"] = s.p50_ms
