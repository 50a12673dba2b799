"""Peer runtimes timed beside ONNX Runtime on the same ONNX file (``compress bench --peers``).

    openvino       OpenVINO on CPU with its default settings: on a CPU with AVX512_BF16 or AMX
                   it silently computes in bfloat16
    openvino-f32   the same with ``INFERENCE_PRECISION_HINT`` f32

Each compiled model has ``INFERENCE_NUM_THREADS`` = the cell's thread count, one stream and the
LATENCY hint. The input shape stays as the file declares it (dynamic batch), as ONNX Runtime
runs it. OpenVINO is an optional dependency (the ``peers`` extra): imported only here, only
when a peer is asked for.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from ..errors import UserError

PEERS = ("openvino", "openvino-f32")
# peer name → OpenVINO compile properties beyond threads, streams and the latency hint
_PEER_PROPERTIES: dict[str, dict[str, str]] = {"openvino": {}, "openvino-f32": {"INFERENCE_PRECISION_HINT": "f32"}}
# runtime layer types that carry a network's multiply-adds: their precision is the one it "runs in"
_COMPUTE_LAYERS = frozenset({"Convolution", "Deconvolution", "FullyConnected", "MatMul"})
_SHORT = {"f32": "fp32", "f16": "fp16", "bf16": "bf16", "i8": "int8", "u8": "int8"}


def import_openvino():
    """The ``openvino`` module, or :class:`UserError` saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise UserError("--peers openvino needs OpenVINO, which is not installed; "
                        "install it with: pip install -e '.[peers]'") from None
    return openvino


@functools.lru_cache(maxsize=1)
def _core():
    return import_openvino().Core()


def openvino_version() -> str:
    return import_openvino().__version__


def compiled_precision(compiled) -> str:
    """What a compiled CPU model really computes in: "int8" when its convolutions / matrix
    products run on 8-bit kernels, joined by "+" with the floating-point precision of the rest
    (the compute layers' own float precision, else ``INFERENCE_PRECISION_HINT``), e.g. "bf16",
    "fp32", "int8+bf16"."""
    hint = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    used: set[str] = set()
    try:
        for op in compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if info["layerType"].astype(str) in _COMPUTE_LAYERS:
                used.add(_SHORT.get(info["runtimePrecision"].astype(str), info["runtimePrecision"].astype(str)))
    except (RuntimeError, KeyError):  # no execution graph to read: the hint is all we know
        used = set()
    floats = sorted(used - {"int8"})
    return "+".join((["int8"] if "int8" in used else []) + (floats or [_SHORT.get(hint, hint)]))


class OpenVinoRunner:
    """One OpenVINO compiled model (CPU) at a fixed thread count, with the interface of
    :class:`compress.runtime.OnnxRunner`: ``set_input`` then call to time a run; ``predict``."""

    def __init__(self, path: str | os.PathLike, threads: int, peer: str = "openvino"):
        if peer not in _PEER_PROPERTIES:
            raise UserError(f"unknown peer {peer!r}; choose one of {', '.join(PEERS)}")
        ov = import_openvino()
        properties = {"INFERENCE_NUM_THREADS": int(threads), "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                      **_PEER_PROPERTIES[peer]}
        core = _core()
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", properties)
        self.request = self.compiled.create_infer_request()
        self.dtype = self.compiled.input(0).get_element_type().to_dtype()
        self.precision = compiled_precision(self.compiled)
        self._tensor = ov.Tensor
        self.x: np.ndarray | None = None

    def set_input(self, images: np.ndarray) -> None:
        # the request reads the array in place; keep it alive as long as the request uses it
        self.x = np.ascontiguousarray(images, dtype=self.dtype)
        self.request.set_input_tensor(self._tensor(self.x, shared_memory=True))

    def __call__(self) -> Any:
        return self.request.infer()

    def predict(self, images: np.ndarray) -> np.ndarray:
        out = self.request.infer({0: np.ascontiguousarray(images, dtype=self.dtype)})
        return np.array(out[0], dtype=np.float32)
