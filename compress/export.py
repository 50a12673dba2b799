"""Export a model to ONNX for serving: dynamic batch axis, BatchNorm folded into the convolutions,
the model facts in ``metadata_props`` (see :mod:`compress.onnx_meta`), ``onnx.checker`` passing,
and the ONNX Runtime outputs verified against PyTorch on real (or random) images.

    report = export_onnx(model, meta, "model.onnx", verify_images=images)
    report.max_abs_diff  # largest |ORT - PyTorch| over the verification logits

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. The dynamo exporter
(torch 2.14's default) needs the ``onnxscript`` package, is several times slower per export and
its graphs depend on ``torch.export`` tracing every control-flow detail; the TorchScript path
exports every architecture of the zoo (pruned shapes included) in about a second each, and its
constant folding folds each Conv → BatchNorm pair into the convolution's weights and bias.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from .artifact import ModelMeta
from .errors import UserError
from .io import atomic_path
from .onnx_meta import set_onnx_meta

MIN_OPSET = 13
MAX_OPSET = 20  # the TorchScript exporter's limit in torch 2.14
DEFAULT_OPSET = 17
DEFAULT_TOLERANCE = 1e-4
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# onnxslim, measured at 224x224 (ORT, 1 thread, interleaved): MobileNetV2 170 → 100 nodes,
# EfficientNet-B0 258 → 239 — it only drops Constant/Identity nodes the exporter leaves — for
# 14.46 vs 14.35 ms and 24.87 vs 24.57 ms (within noise; ORT does the same clean-up at load) and
# 0.2-0.6% larger files. So the default keeps the graph as exported; simplify=True / --simplify
# is available and verified like any export.
DEFAULT_SIMPLIFY = False


class ExportVerificationError(UserError):
    """ONNX Runtime's outputs differ from PyTorch's by more than the tolerance."""


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how well it matches PyTorch."""

    path: Path
    opset: int
    input_size: tuple[int, int, int]
    file_bytes: int
    nodes: int
    op_counts: dict[str, int]
    batchnorm_nodes: int
    simplified: bool
    dynamic_spatial: bool
    max_abs_diff: float | None  # None when verification was skipped
    tolerance: float
    verified_on: str  # e.g. "8 images (digits test split)" or "skipped"
    seconds: float
    exporter: str = "torchscript"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["path"] = str(self.path)
        d["input_size"] = list(self.input_size)
        return d


def _resolve_input_size(meta: ModelMeta, input_size: int | Sequence[int] | None) -> tuple[int, int, int]:
    if input_size is None:
        c, h, w = meta.input_size
    elif isinstance(input_size, int):
        c, h, w = meta.input_size[0], input_size, input_size
    else:
        if len(input_size) != 3:
            raise UserError(f"input size must be a side length or (C, H, W), got {input_size}")
        c, h, w = input_size
    if not (8 <= h <= 4096 and 8 <= w <= 4096):
        raise UserError(f"input size must be between 8 and 4096 pixels, got {h}x{w}")
    return int(c), int(h), int(w)


def _torch_export(model: nn.Module, dummy: torch.Tensor, path: Path, opset: int, dynamic_spatial: bool) -> None:
    """TorchScript-based export, quiet (its deprecation notice and tracer chatter are not ours)."""
    input_axes = {0: "batch", 2: "height", 3: "width"} if dynamic_spatial else {0: "batch"}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (dummy,), str(path), dynamo=False, opset_version=opset, do_constant_folding=True,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: input_axes, OUTPUT_NAME: {0: "batch"}},
        )


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` PyTorch intra-op threads, then restore the previous setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with every Conv2d → BatchNorm2d pair fused into one conv.

    The exporter's constant folding normally does this already; this is the fallback for graphs
    where it did not. Needs a model ``torch.fx`` can trace."""
    from torch.fx.experimental.optimization import fuse

    return fuse(copy.deepcopy(model).eval(), inplace=True)


def _op_counts(graph) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def ort_session(path: str | os.PathLike, threads: int = 1, *, spinning: bool = True):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads, sequential execution."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


@contextlib.contextmanager
def _restore_mode(model: nn.Module, training: bool):
    try:
        yield
    finally:
        model.train(training)


@torch.no_grad()
def _max_abs_diff(model: nn.Module, session, images: torch.Tensor, dynamic_spatial: bool) -> float:
    """Largest |ORT - PyTorch| over the logits of ``images`` run as one batch, of the first image
    alone (the dynamic batch axis) and, with dynamic spatial axes, of the first image resized to
    a larger side."""
    name = session.get_inputs()[0].name
    checks = [images, images[:1]]
    if dynamic_spatial:
        h, w = images.shape[-2:]
        checks.append(nn.functional.interpolate(images[:1], size=(h + 16, w + 16), mode="bilinear",
                                                align_corners=False))
    worst = 0.0
    for x in checks:
        ref = model(x).float().numpy()
        out = session.run(None, {name: x.numpy().astype(np.float32)})[0]
        if out.shape != ref.shape:
            raise ExportVerificationError(f"ONNX output shape {out.shape} differs from PyTorch's {ref.shape}")
        worst = max(worst, float(np.abs(out - ref).max()))
    return worst


def export_onnx(model: nn.Module, meta: ModelMeta, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
                verify: bool = True, input_size: int | Sequence[int] | None = None,
                verify_images: torch.Tensor | None = None, verify_source: str = "",
                tol: float = DEFAULT_TOLERANCE, simplify: bool = DEFAULT_SIMPLIFY,
                dynamic_spatial: bool = True) -> ExportReport:
    """Export ``model`` (its current weights, in eval mode) to ``path`` and return an :class:`ExportReport`.

    ``input_size`` is the traced input: a side length or (C, H, W), default ``meta.input_size``.
    The batch axis is dynamic; so are height and width unless ``dynamic_spatial=False`` (the
    networks are fully convolutional with global pooling, so a model trained at 32x32 can be
    timed or served at 224x224; ONNX Runtime runs both forms equally fast).

    ``verify_images`` (N, C, H, W), already normalised, are run through PyTorch and ONNX Runtime
    (four seeded random images when ``None``) and the export fails with
    :class:`ExportVerificationError` — writing nothing — when the largest absolute logit
    difference exceeds ``tol``. ``verify_source`` names where the images came from, for the
    report. The file is written under a temporary name and renamed on success."""
    import onnx

    if not MIN_OPSET <= int(opset) <= MAX_OPSET:
        raise UserError(f"opset must be between {MIN_OPSET} and {MAX_OPSET}, got {opset}")
    if tol <= 0:
        raise UserError(f"tolerance must be > 0, got {tol}")
    size = _resolve_input_size(meta, input_size)
    path = Path(path)
    start = time.perf_counter()
    notes: list[str] = []
    was_training = model.training
    model.eval()
    # One thread: tracing and a few verification images are small work, and on a CPU shared with
    # other jobs PyTorch's OpenMP barriers make multi-threaded small convolutions 10-50x slower.
    with torch_threads(1), _restore_mode(model, was_training):
        if verify and verify_images is None:
            g = torch.Generator().manual_seed(0)
            verify_images = torch.randn(4, *size, generator=g)
            verify_source = verify_source or "random normal inputs"
        if verify_images is not None:
            verify_images = verify_images.detach().float().cpu()
            if tuple(verify_images.shape[1:]) != size:
                raise UserError(f"verification images are {tuple(verify_images.shape[1:])}, export input is {size}")
        dummy = torch.randn(2, *size, generator=torch.Generator().manual_seed(1))
        with atomic_path(path) as tmp:
            _torch_export(model, dummy, tmp, int(opset), dynamic_spatial)
            proto = onnx.load(str(tmp))
            bn = sum(n.op_type == "BatchNormalization" for n in proto.graph.node)
            export_model = model
            if bn:
                export_model = fold_batchnorm(model)
                _torch_export(export_model, dummy, tmp, int(opset), dynamic_spatial)
                proto = onnx.load(str(tmp))
                bn = sum(n.op_type == "BatchNormalization" for n in proto.graph.node)
                notes.append("BatchNorm folded with torch.fx before export")
                if bn:
                    notes.append(f"{bn} BatchNormalization node(s) not after a convolution stay in the graph")
            simplified = False
            if simplify:
                import onnxslim

                with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    proto = onnxslim.slim(proto)
                simplified = True
            proto.producer_name = "compress"
            proto.doc_string = f"{meta.arch} ({meta.task}, {meta.num_classes} classes) exported by compress"
            set_onnx_meta(proto, meta)
            onnx.checker.check_model(proto, full_check=True)
            onnx.save(proto, str(tmp))
            max_diff = None
            if verify:
                session = ort_session(tmp, threads=1)
                max_diff = _max_abs_diff(model, session, verify_images, dynamic_spatial)
                if not np.isfinite(max_diff) or max_diff > tol:
                    raise ExportVerificationError(
                        f"ONNX Runtime differs from PyTorch by {max_diff:.3g} (max abs logit) > tolerance {tol:g}; "
                        f"nothing written (raise --tol or use --no-verify to inspect the graph)")
            file_bytes = tmp.stat().st_size
    n_verify = 0 if verify_images is None else len(verify_images)
    return ExportReport(
        path=path, opset=int(opset), input_size=size, file_bytes=file_bytes, nodes=len(proto.graph.node),
        op_counts=_op_counts(proto.graph), batchnorm_nodes=bn, simplified=simplified,
        dynamic_spatial=dynamic_spatial, max_abs_diff=max_diff,
        tolerance=float(tol), verified_on=f"{n_verify} images ({verify_source})" if verify else "skipped",
        seconds=time.perf_counter() - start, notes=notes)
