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
