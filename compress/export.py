"""Export a model to ONNX for serving: dynamic batch axis, BatchNorm folded into the convolutions,
the model facts in ``metadata_props`` (see :mod:`compress.onnx_meta`), ``onnx.checker`` passing,
and the ONNX Runtime outputs verified against PyTorch on real (or random) images.

    report = export_onnx(model, meta, "model.onnx", verify_images=images)
    report.max_abs_diff  # largest |ORT - PyTorch| over the verification outputs

Graph outputs, in order: ``logits`` (N, classes) and, for the zoo's networks (anything with
``forward_features`` / ``forward_head`` / ``get_classifier``), ``embedding`` (N, D) float32: the
pooled penultimate features that enter the final Linear (``forward_head(..., pre_logits=True)``,
not normalised), so a service can compute embeddings with ONNX Runtime alone. The metadata then
also holds ``embedding_output`` = ``"embedding"`` and ``embedding_dim`` = D (JSON values, like
every key; see :mod:`compress.onnx_meta`). The second output is free: it is a tensor the graph
computes anyway, same node count, 88 bytes more; MobileNetV2 at 224x224, batch 1, ORT timed
interleaved, 200 runs: p50 7.15-7.17 vs 7.18-7.19 ms at 1 thread, 4.66-4.68 vs 4.68-4.69 ms at
2 threads (with vs without; 2026-11-24). ``embedding=False`` (``--no-embedding``) exports the
logits alone.

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

from .config import StageConfig, option
from .errors import UserError
from .io import atomic_path, check_outputs, sidecar, write_json
from .meta import ModelMeta
from .onnx_meta import EMBEDDING_OUTPUT, embedding_dim, set_onnx_meta
from .runtime import ort_session
from .torch_utils import model_mode, torch_threads

MIN_OPSET = 13
MAX_OPSET = 20  # the TorchScript exporter's limit in torch 2.14
DEFAULT_OPSET = 17
DEFAULT_TOLERANCE = 1e-4
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
EMBEDDING_NAME = EMBEDDING_OUTPUT  # the second output; the name is a contract with serve/
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
    embedding_dim: int | None = None  # width of the ``embedding`` output; None: logits only
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


def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The pooled penultimate features (N, D) of a zoo model: what enters its final Linear."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


class LogitsAndEmbedding(nn.Module):
    """``model`` as a two-output network: (logits, embedding), the logits computed from the
    embedding by the final Linear, so the exported graph pools once."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = embed(self.model, x)
        return self.model.get_classifier()(features), features


def with_embedding(model: nn.Module, dummy: torch.Tensor, notes: list[str]) -> LogitsAndEmbedding | None:
    """``model`` wrapped to also output its embedding, or ``None`` when it has no
    ``forward_features`` / ``forward_head`` / ``get_classifier`` surface (a plain module: logits
    only, silently) or when the wrapped logits differ from ``model(x)`` (a head that does more
    than its final Linear in eval mode: a note says so)."""
    if not all(callable(getattr(model, a, None)) for a in ("forward_features", "forward_head", "get_classifier")):
        return None
    wrapped = LogitsAndEmbedding(model)
    with torch.no_grad():
        try:
            logits, features = wrapped(dummy)
            ref = model(dummy)
        except (RuntimeError, TypeError, ValueError) as e:
            notes.append(f"no embedding output: the head cannot be split ({str(e).splitlines()[0][:120]})")
            return None
    if features.ndim != 2 or logits.shape != ref.shape or not torch.allclose(logits, ref, rtol=1e-4, atol=1e-5):
        notes.append("no embedding output: the logits are not the final Linear of the pooled features")
        return None
    return wrapped


def _torch_export(model: nn.Module, dummy: torch.Tensor, path: Path, opset: int, dynamic_spatial: bool,
                  embedding: bool = False) -> None:
    """TorchScript-based export, quiet (its deprecation notice and tracer chatter are not ours).
    ``embedding``: ``model`` returns (logits, embedding) (see :class:`LogitsAndEmbedding`)."""
    input_axes = {0: "batch", 2: "height", 3: "width"} if dynamic_spatial else {0: "batch"}
    outputs = [OUTPUT_NAME, EMBEDDING_NAME] if embedding else [OUTPUT_NAME]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (dummy,), str(path), dynamo=False, opset_version=opset, do_constant_folding=True,
            input_names=[INPUT_NAME], output_names=outputs,
            dynamic_axes={INPUT_NAME: input_axes, **{name: {0: "batch"} for name in outputs}},
        )


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


def _max_abs_diff(model: nn.Module, session, images: torch.Tensor, dynamic_spatial: bool) -> float:
    """Largest |ORT - PyTorch| over the logits of ``images`` run as one batch, of the first image
    alone (the dynamic batch axis) and, with dynamic spatial axes, of the first image resized to
    a larger side; when the graph has a second output (the embedding), over it too, against
    :func:`embed`, relative to its largest |value| when that exceeds 1 (unbounded features such
    as ResNet-50's 2048 post-ReLU sums carry float32 rounding of their own size)."""
    # no_grad as a block, not a decorator: mutmut (make mutation) skips decorated functions
    with torch.no_grad():
        name = session.get_inputs()[0].name
        checks = [images, images[:1]]
        if dynamic_spatial:
            h, w = images.shape[-2:]
            checks.append(nn.functional.interpolate(images[:1], size=(h + 16, w + 16), mode="bilinear",
                                                    align_corners=False))
        worst = 0.0
        for x in checks:
            outs = session.run(None, {name: x.numpy().astype(np.float32)})
            pairs = [(outs[0], model(x).float().numpy(), 1.0)]
            if len(outs) > 1:
                ref = embed(model, x).float().numpy()
                pairs.append((outs[1], ref, max(1.0, float(np.abs(ref).max()))))
            for out, ref, scale in pairs:
                if out.shape != ref.shape:
                    raise ExportVerificationError(f"ONNX output shape {out.shape} differs from PyTorch's {ref.shape}")
                # NaN propagates (max(0.0, nan) is 0.0)
                worst = float(np.maximum(worst, np.abs(out - ref).max() / scale))
        return worst


def _export_graph(model: nn.Module, dummy: torch.Tensor, tmp: Path, opset: int, dynamic_spatial: bool,
                  notes: list[str], embedding: bool = False):
    """Export to ``tmp`` and load the graph; when the exporter left BatchNormalization nodes,
    export again from a torch.fx-fused copy. Returns (proto, BatchNormalization nodes left).
    ``embedding``: also output the embedding when the model allows (see :func:`with_embedding`)."""
    import onnx

    wrapped = with_embedding(model, dummy, notes) if embedding else None
    _torch_export(wrapped or model, dummy, tmp, opset, dynamic_spatial, wrapped is not None)
    proto = onnx.load(str(tmp))
    bn = sum(n.op_type == "BatchNormalization" for n in proto.graph.node)
    if bn:
        fused = fold_batchnorm(model)
        _torch_export(LogitsAndEmbedding(fused) if wrapped is not None else fused, dummy, tmp, opset,
                      dynamic_spatial, wrapped is not None)
        proto = onnx.load(str(tmp))
        bn = sum(n.op_type == "BatchNormalization" for n in proto.graph.node)
        notes.append("BatchNorm folded with torch.fx before export")
        if bn:
            notes.append(f"{bn} BatchNormalization node(s) not after a convolution stay in the graph")
    return proto, bn


def verify_onnx(model: nn.Module, onnx_path: str | os.PathLike, images: torch.Tensor, tol: float,
                dynamic_spatial: bool = True) -> float:
    """The largest |ONNX Runtime - PyTorch| logit difference on ``images`` (see
    :func:`_max_abs_diff`); :class:`ExportVerificationError` when it exceeds ``tol`` or is not
    finite (a NaN anywhere fails). PyTorch runs in eval mode (the model's mode is restored)."""
    with model_mode(model, training=False):
        max_diff = _max_abs_diff(model, ort_session(onnx_path, threads=1), images, dynamic_spatial)
    if not np.isfinite(max_diff) or max_diff > tol:
        raise ExportVerificationError(
            f"ONNX Runtime differs from PyTorch by {max_diff:.3g} (max abs logit) > tolerance {tol:g}; "
            f"nothing written (raise --tol or use --no-verify to inspect the graph)")
    return max_diff


def export_onnx(model: nn.Module, meta: ModelMeta, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
                verify: bool = True, input_size: int | Sequence[int] | None = None,
                verify_images: torch.Tensor | None = None, verify_source: str = "",
                tol: float = DEFAULT_TOLERANCE, simplify: bool = DEFAULT_SIMPLIFY,
                dynamic_spatial: bool = True, embedding: bool = True) -> ExportReport:
    """Export ``model`` (its current weights, in eval mode) to ``path`` and return an :class:`ExportReport`.

    ``input_size`` is the traced input: a side length or (C, H, W), default ``meta.input_size``.
    The batch axis is dynamic; so are height and width unless ``dynamic_spatial=False`` (the
    networks are fully convolutional with global pooling, so a model trained at 32x32 can be
    timed or served at 224x224; ONNX Runtime runs both forms equally fast).

    ``verify_images`` (N, C, H, W), already normalised, are run through PyTorch and ONNX Runtime
    (four seeded random images when ``None``) and the export fails with
    :class:`ExportVerificationError` — writing nothing — when the largest absolute logit
    difference exceeds ``tol``. ``verify_source`` names where the images came from, for the
    report. The file is written under a temporary name and renamed on success.

    ``embedding``: add the second output ``embedding`` (see the module docstring) when the model
    has the zoo's surface; a note says why when it cannot."""
    import onnx

    if not MIN_OPSET <= int(opset) <= MAX_OPSET:
        raise UserError(f"opset must be between {MIN_OPSET} and {MAX_OPSET}, got {opset}")
    if tol <= 0:
        raise UserError(f"tolerance must be > 0, got {tol}")
    size = _resolve_input_size(meta, input_size)
    path = Path(path)
    start = time.perf_counter()
    notes: list[str] = []
    # One thread: tracing and a few verification images are small work, and on a CPU shared with
    # other jobs PyTorch's OpenMP barriers make multi-threaded small convolutions 10-50x slower.
    with torch_threads(1), model_mode(model, training=False):
        if verify:
            if verify_images is None:
                verify_images = torch.randn(4, *size, generator=torch.Generator().manual_seed(0))
                verify_source = verify_source or "random normal inputs"
            verify_images = verify_images.detach().float().cpu()
            if tuple(verify_images.shape[1:]) != size:
                raise UserError(f"verification images are {tuple(verify_images.shape[1:])}, export input is {size}")
        dummy = torch.randn(2, *size, generator=torch.Generator().manual_seed(1))
        with atomic_path(path) as tmp:
            proto, bn = _export_graph(model, dummy, tmp, int(opset), dynamic_spatial, notes, embedding)
            if simplify:
                import onnxslim

                with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    proto = onnxslim.slim(proto)
            proto.producer_name = "compress"
            proto.doc_string = f"{meta.arch} ({meta.task}, {meta.num_classes} classes) exported by compress"
            set_onnx_meta(proto, meta)
            onnx.checker.check_model(proto, full_check=True)
            onnx.save(proto, str(tmp))
            max_diff = verify_onnx(model, tmp, verify_images, tol, dynamic_spatial) if verify else None
            file_bytes = tmp.stat().st_size
    return ExportReport(
        path=path, opset=int(opset), input_size=size, file_bytes=file_bytes, nodes=len(proto.graph.node),
        op_counts=_op_counts(proto.graph), batchnorm_nodes=bn, simplified=simplify,
        dynamic_spatial=dynamic_spatial, max_abs_diff=max_diff, tolerance=float(tol),
        verified_on=f"{len(verify_images)} images ({verify_source})" if verify else "skipped",
        seconds=time.perf_counter() - start, notes=notes, embedding_dim=embedding_dim(proto))


# ----------------------------------------------------------------------------- the stage

VERIFY_IMAGES = 8


@dataclass(kw_only=True)
class ExportConfig(StageConfig):
    """Options of the export stage (``compress export``)."""

    opset: int = option(DEFAULT_OPSET, check=(lambda v: MIN_OPSET <= v <= MAX_OPSET,
                                              f"must be between {MIN_OPSET} and {MAX_OPSET}"),
                        help="ONNX opset version")
    input_size: int | None = option(None, check=(lambda v: 8 <= v <= 4096, "must be between 8 and 4096"),
                                    help="square input side to trace and verify at (default: the model's "
                                         "training size)")
    static_shape: bool = option(False, help="fix height and width in the graph (default: dynamic, any input "
                                            "size works)")
    verify: bool = option(True, help="compare ONNX Runtime with PyTorch on real images and refuse the export "
                                     "above --tol")
    data: str | None = option(None, help="data set whose test images verify the export (default: the one in "
                                         "the model's history, else random inputs)")
    tol: float = option(DEFAULT_TOLERANCE, check=(lambda v: v > 0, "must be > 0"),
                        help="largest allowed |ORT - PyTorch| logit difference")
    simplify: bool = option(DEFAULT_SIMPLIFY, help="run onnxslim on the graph (measured: no speed-up; see "
                                                   "compress/export.py)")
    embedding: bool = option(True, help="add a second output 'embedding' (N, D): the pooled features before the "
                                        "final Linear, for embeddings and few-shot classes without torch")


def verification_images(meta: ModelMeta, spec: str | None, side: int) -> tuple[torch.Tensor | None, str, list[str]]:
    """(images, where they came from, notes): the first test images of ``spec`` (default: the data
    set in the model's history) preprocessed for the model; ``None`` when no data set is named, or
    when the recorded one cannot be loaded (a note says so; an explicit ``spec`` must load)."""
    from .data import load_data_for_model

    if not (spec or meta.training_data()):
        return None, "", []
    try:
        bundle = load_data_for_model(meta, spec, image_size=side, check=False)
    except UserError as e:
        if spec:
            raise
        return None, "", [f"data set from the model's history is not available ({e}); verified on random inputs"]
    split = bundle.test if len(bundle.test) else bundle.val
    n = min(VERIFY_IMAGES, len(split))
    if n == 0:
        raise UserError(f"data set {bundle.name!r} has no test images to verify with")
    images = torch.stack([split[i][0] for i in range(n)])
    if images.shape[1] != meta.input_size[0]:
        raise UserError(f"data set {bundle.name!r} has {images.shape[1]} channels, the model expects "
                        f"{meta.input_size[0]}")
    return images, f"{bundle.name} test split", []


def export_artifact(model_path: str | os.PathLike, output: str | os.PathLike | None = None,
                    config: ExportConfig | None = None) -> ExportReport:
    """The export stage: ``model_path`` (.safetensors) → ``output`` (.onnx, default: the model's
    name with .onnx) plus its JSON report (``output`` + .json). Returns the report."""
    from .artifact import load_model

    cfg = (config or ExportConfig()).validate()
    src = Path(model_path)
    out = Path(output) if output else src.with_suffix(".onnx")
    if out.suffix.lower() != ".onnx":
        raise UserError(f"output {out} should end in .onnx")
    check_outputs([out, sidecar(out)], [src])
    model, meta = load_model(src)
    images, source, notes = None, "", []
    if cfg.verify:
        images, source, notes = verification_images(meta, cfg.data, cfg.input_size or int(meta.input_size[-1]))
    report = export_onnx(model, meta, out, opset=cfg.opset, verify=cfg.verify, input_size=cfg.input_size,
                         verify_images=images, verify_source=source, tol=cfg.tol, simplify=cfg.simplify,
                         dynamic_spatial=not cfg.static_shape, embedding=cfg.embedding)
    report.notes[:0] = notes
    write_json(sidecar(out), {**report.to_dict(), "source": str(src), "arch": meta.arch, "command": "export",
                              "config": cfg.to_dict()})
    return report
