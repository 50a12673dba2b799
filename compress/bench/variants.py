"""Bench inputs: a model file → a :class:`Variant` (engine, precision, size, params, MACs, input
shape) and the runner that times it. ONNX variants need no torch; ``.safetensors`` variants run in
PyTorch eager (or ``torch.compile``) through :class:`TorchRunner`; an ONNX file can also run in a
peer runtime (:func:`peer_variant`, :mod:`compress.bench.peers`)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import UserError
from ..formats import open_model_file
from ..runtime import OnnxRunner, resolve_input_size, square_size


class TorchRunner:
    """A PyTorch module (eager or ``torch.compile``) run under ``inference_mode``.

    PyTorch's intra-op thread count is process-wide: the caller sets it per cell
    (:func:`compress.torch_utils.torch_threads`)."""

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


@dataclass
class Variant:
    """One input file and the facts about it that do not depend on the timing cell."""

    name: str
    path: Path
    engine: str  # "pytorch" | "pytorch.compile" | "onnxruntime" | "onnxruntime-int8" | "openvino"
    file_bytes: int
    stored_bytes: int | None
    params: int | None
    meta: Any = None
    model: Any = None
    onnx_path: Path | None = None
    graph_input: tuple[Any, ...] | None = None  # ONNX input shape (ints or symbolic names)
    precision: str | None = None  # what the engine computes in: "fp32", "int8", "bf16", "int8+bf16", ...
    peer: str | None = None  # a peer runtime running the ONNX file (compress.bench.peers.PEERS)
    warnings: list[str] = field(default_factory=list)
    _macs: dict[tuple[int, int, int], int | None] = field(default_factory=dict)

    @property
    def is_onnx(self) -> bool:
        return self.onnx_path is not None

    def timing_size(self, input_size: int | Sequence[int] | None, batch: int | None = None) -> tuple[int, int, int]:
        """The (C, H, W) to time at: ``input_size`` if given, else the metadata's, else the graph's;
        :class:`UserError` when the graph fixes another size or ``batch``."""
        return resolve_input_size(input_size, meta_size=self.meta.input_size if self.meta is not None else None,
                                  graph_shape=self.graph_input, batch=batch, source=str(self.path))

    def macs(self, size: tuple[int, int, int]) -> int | None:
        """MACs per image at ``size`` (convolutions and fully connected layers)."""
        if size not in self._macs:
            if self.model is not None:
                from models import count_macs

                self._macs[size] = count_macs(self.model, size)
            else:
                from ..onnx_graph import onnx_macs

                self._macs[size] = onnx_macs(self.onnx_path, size)
        return self._macs[size]

    def runner(self, threads: int, *, spinning: bool | str = "run"):
        """A fresh runner for this variant (ONNX Runtime session or peer runtime's compiled model
        at ``threads``, or the module)."""
        if self.peer is not None:
            from .peers import OpenVinoRunner

            return OpenVinoRunner(self.onnx_path, threads, self.peer)
        if self.is_onnx:
            return OnnxRunner(self.onnx_path, threads, spinning=spinning)
        return TorchRunner(self.model, compile=self.engine == "pytorch.compile")


def _float_precision(proto) -> str:
    """"fp16" for a graph taking float16 input (as :class:`OnnxRunner` feeds it), else "fp32"."""
    from onnx import TensorProto

    init_names = {i.name for i in proto.graph.initializer}
    first = next(i for i in proto.graph.input if i.name not in init_names)
    return "fp16" if first.type.tensor_type.elem_type == TensorProto.FLOAT16 else "fp32"


class PeerCannotLoad(UserError):
    """A peer runtime that is installed cannot read this ONNX file (e.g. OpenVINO and ONNX
    Runtime's com.microsoft QOperator ops): the bench leaves that column out with a warning."""


def peer_variant(v: Variant, peer: str) -> Variant:
    """``v``'s ONNX file run by the peer runtime ``peer`` (e.g. "openvino"), named "NAME [peer]".
    Compiles it once to read the precision the runtime really uses; :class:`UserError` when the
    runtime is missing, :class:`PeerCannotLoad` when it cannot load the file."""
    from .peers import OpenVinoRunner

    if not v.is_onnx:
        raise UserError(f"{v.name}: peer runtimes run ONNX files only")
    try:
        precision = OpenVinoRunner(v.onnx_path, 1, peer).precision
    except UserError:
        raise
    except Exception as e:  # openvino raises its own exception types
        # its messages open with a chain of "Exception from src/...cpp:N:" lines; the cause is last
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        cause = next((line for line in reversed(lines) if not line.startswith("Exception from ")),
                     lines[0] if lines else type(e).__name__)
        raise PeerCannotLoad(f"{v.path}: OpenVINO cannot load it ({cause[:200]}); its [{peer}] column is "
                             "left out") from None
    return Variant(name=f"{v.name} [{peer}]", path=v.path, engine="openvino", file_bytes=v.file_bytes,
                   stored_bytes=v.stored_bytes, params=v.params, meta=v.meta, onnx_path=v.onnx_path,
                   graph_input=v.graph_input, precision=precision, peer=peer, _macs=v._macs)


def load_variant(path: str | os.PathLike, name: str | None = None) -> Variant:
    """Open one bench input. Raises :class:`UserError` for a missing file or one that is no model
    file; warns (in ``Variant.warnings``) about an ONNX model without our metadata."""
    path = Path(path)
    loaded = open_model_file(path)
    v = Variant(name=name or path.name, path=path, engine="pytorch", file_bytes=path.stat().st_size,
                stored_bytes=loaded.stored_bytes, params=None, meta=loaded.meta, model=loaded.model,
                onnx_path=loaded.onnx_path, precision="fp32")
    if loaded.onnx_path is None:
        from models import count_params

        v.params = count_params(loaded.model)
        return v
    from ..onnx_graph import input_shape, is_quantized, stored_params
    from ..onnx_meta import load_onnx

    proto = load_onnx(loaded.onnx_path)
    quantized = is_quantized(proto)
    v.engine = "onnxruntime-int8" if quantized else "onnxruntime"
    v.precision = "int8" if quantized else _float_precision(proto)
    v.params = stored_params(proto)
    v.graph_input = input_shape(proto)
    if loaded.meta is None:
        v.warnings.append(f"{path}: ONNX model without compress metadata (no labels or normalisation); "
                          f"input shape from its graph: {list(v.graph_input)}")
    try:  # ONNX Runtime must accept it; this fails early for files onnx.load half-parsed
        OnnxRunner(loaded.onnx_path, 1)
    except Exception as e:  # onnxruntime raises its own exception types
        raise UserError(f"{path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:200]})") from None
    return v


def time_torch(model, *, batch: int = 1, threads: int = 2, input_size: int | Sequence[int] | None = None,
               warmup: int = 3, runs: int = 30, compile: bool = False):
    """Latency (:class:`~compress.runtime.LatencyStats`) of a PyTorch module, eager or compiled, on
    CPU with ``threads`` intra-op threads (restored afterwards). ``input_size`` defaults to the
    model's ``default_cfg``."""
    from ..runtime import LatencyStats, check_batch_threads, measure_interleaved, random_images
    from ..torch_utils import torch_threads

    check_batch_threads(batch, threads)
    if input_size is None:
        input_size = tuple(getattr(model, "default_cfg", {}).get("input_size", (3, 224, 224)))
    runner = TorchRunner(model, compile=compile)
    runner.set_input(random_images(batch, square_size(input_size)))
    with torch_threads(threads):
        (samples,) = measure_interleaved([runner], warmup=warmup, min_runs=runs, budget_s=0.0, max_runs=runs)
    return LatencyStats.from_seconds(samples, batch, threads)
