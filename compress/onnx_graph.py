"""Facts read off an ONNX graph, torch-free: weights stored, MACs per image (from shape
inference), whether it is quantized, the input's shape."""
from __future__ import annotations

import os
from typing import Any

import numpy as np

QUANT_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger",
                       "QLinearMatMul", "DynamicQuantizeLinear"})


def is_quantized(proto) -> bool:
    """True when the graph holds quantized operators (QDQ or QOperator form)."""
    return any(n.op_type in QUANT_OPS for n in proto.graph.node)


def stored_params(proto) -> int:
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


def input_shape(proto) -> tuple[Any, ...]:
    """The first non-initializer input's shape: ints for fixed axes, names for dynamic ones."""
    init_names = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in init_names]
    dims = inputs[0].type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims)


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
        for _ in range(64):  # each pass lets inference run past more of ONNX Runtime's own ops
            if not _annotate_ort_ops(inferred):
                break
            inferred = shape_inference.infer_shapes(inferred, data_prop=True)
    except Exception:  # a graph shape inference cannot handle: leave the column empty
        return None
    return _count_macs(inferred)


# ONNX Runtime's com.microsoft ops in QOperator graphs, which ONNX's shape inference does not know:
# element-wise ones keep their first input's shape, global pooling keeps (N, C) and makes H, W 1
_SAME_SHAPE = frozenset({"QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax",
                         "QuickGelu"})


def _annotate_ort_ops(proto) -> bool:
    """Give the outputs of com.microsoft ops with known input shapes a shape (value_info); True
    when anything was added."""
    from onnx import helper

    known = {}
    for vi in list(proto.graph.value_info) + list(proto.graph.input):
        d = vi.type.tensor_type.shape.dim
        if d and all(x.HasField("dim_value") for x in d):
            known[vi.name] = ([x.dim_value for x in d], vi.type.tensor_type.elem_type)
    added = False
    for node in proto.graph.node:
        if node.domain != "com.microsoft" or node.output[0] in known or node.input[0] not in known:
            continue
        shape, elem = known[node.input[0]]
        if node.op_type == "QLinearGlobalAveragePool":
            last = next((a.i for a in node.attribute if a.name == "channels_last"), 0)
            shape = [shape[0], 1, 1, shape[-1]] if last else [*shape[:2], *[1] * (len(shape) - 2)]
        elif node.op_type not in _SAME_SHAPE:
            continue
        proto.graph.value_info.append(helper.make_tensor_value_info(node.output[0], elem, shape))
        known[node.output[0]] = (shape, elem)
        added = True
    return added


def _count_macs(inferred) -> int | None:
    shapes: dict[str, list[int]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        d = vi.type.tensor_type.shape.dim
        if d and all(x.HasField("dim_value") for x in d):
            shapes[vi.name] = [x.dim_value for x in d]
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    weight_input = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "Gemm": 1, "MatMul": 1,
                    "MatMulInteger": 1, "QLinearMatMul": 3, "QGemm": 3}
    total = 0
    for node in inferred.graph.node:
        if node.op_type not in weight_input:
            continue
        w = shapes.get(node.input[weight_input[node.op_type]])
        if node.op_type in ("Gemm", "QGemm") and w is not None and len(w) == 2:
            # one image's row times the weight: its dimensions alone (the output's shape may be
            # unknown: ONNX's shape inference stops at ONNX Runtime's com.microsoft ops, e.g. the
            # QLinearGlobalAveragePool in front of a QOperator graph's classifier)
            total += int(w[0]) * int(w[1])
            continue
        out = shapes.get(node.output[0])
        if out is None or w is None:
            return None
        out_elems = int(np.prod(out[1:])) if len(out) > 1 else int(np.prod(out))
        if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
            total += out_elems * int(np.prod(w[1:]))
        else:
            total += out_elems * w[-2]
    return total
