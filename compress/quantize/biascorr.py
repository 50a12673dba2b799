"""Bias correction of INT8 weight error (torch-free).

Rounding a convolution's weights to INT8 shifts the *mean* of its output, and the shift is not
noise: for output channel ``o`` it is ``sum(dW[o] * E[x])`` with ``dW = dequant(quant(W)) - W``
the rounding error and ``E[x]`` the mean input each weight tap sees. Per-tensor scales make
``dW`` large for channels far smaller than the tensor's largest (depthwise convolutions after
BatchNorm folding are the usual case), and the shifts add up layer after layer. Subtracting the
expected shift from the float bias before quantizing removes it (Nagel et al., "Data-Free
Quantization Through Weight Equalization and Bias Correction", 2019, the empirical variant; NNCF's
post-training quantization applies a bias correction by default).

``dW`` is computed with ONNX Runtime's own weight quantizer (``quantize_data``: symmetric INT8,
one scale per tensor or per output channel, exactly as :func:`int8.quantize_candidate` asks for),
so the INT8 graph built from the corrected float graph rounds the same weights the same way.
``E[x]`` is measured per input channel *and kernel tap* on the calibration images with the float
graph, zero padding included, so border positions are counted as the convolution sees them.

    means = tap_means(pre, images, work)                       # once per graph
    corrected = work / "pre-bc.onnx"
    shifts = correct_biases(pre, corrected, means, per_channel=False)
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

BATCH = 16  # calibration images per run of the graph with every convolution input exposed


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _correctable(graph) -> list:
    """The Conv nodes whose weight (and bias, if any) are initializers, with explicit padding."""
    inits = {i.name for i in graph.initializer}
    out = []
    for n in graph.node:
        if n.op_type != "Conv" or len(n.input) < 2 or n.input[1] not in inits:
            continue
        if len(n.input) > 2 and n.input[2] and n.input[2] not in inits:
            continue
        auto_pad = _attrs(n).get("auto_pad", b"NOTSET")
        if (auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad) not in ("NOTSET", ""):
            continue
        out.append(n)
    return out


def _tap_sums(x: np.ndarray, kernel: Sequence[int], attrs: dict) -> tuple[np.ndarray, int]:
    """Sum over batch and output positions of the input value each kernel tap multiplies:
    an array (C, kh, kw), and the number of (image, position) pairs summed."""
    kh, kw = kernel
    sh, sw = attrs.get("strides", [1, 1])
    dh, dw = attrs.get("dilations", [1, 1])
    top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    ho = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    sums = np.empty((x.shape[1], kh, kw), dtype=np.float64)
    for a in range(kh):
        for b in range(kw):
            window = xp[:, :, a * dh:a * dh + sh * (ho - 1) + 1:sh, b * dw:b * dw + sw * (wo - 1) + 1:sw]
            sums[:, a, b] = window.sum(axis=(0, 2, 3), dtype=np.float64)
    return sums, x.shape[0] * ho * wo


def tap_means(path: Path, images: np.ndarray, work: Path) -> dict[str, np.ndarray]:
    """For every correctable convolution of the float graph ``path`` (by node name): the mean,
    over ``images`` and output positions, of the input value each weight tap multiplies, (C, kh, kw)."""
    import onnx
    from onnx import numpy_helper

    from .int8 import _unoptimised_session, _with_outputs

    graph = onnx.load(str(path)).graph
    convs = _correctable(graph)
    if not convs or len(images) == 0:
        return {}
    weights = {i.name: i for i in graph.initializer}
    graph_input = graph.input[0].name
    exposed = work / "bias-correction.onnx"
    inputs = sorted({n.input[0] for n in convs} - {graph_input})
    _with_outputs(path, inputs, exposed)
    sess = _unoptimised_session(exposed)
    names = [o.name for o in sess.get_outputs()]
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for i in range(0, len(images), BATCH):
        batch = np.ascontiguousarray(images[i:i + BATCH], dtype=np.float32)
        values = dict(zip(names, sess.run(None, {graph_input: batch})))
        values[graph_input] = batch
        for n in convs:
            kernel = numpy_helper.to_array(weights[n.input[1]]).shape[2:]
            if len(kernel) != 2:
                continue
            s, c = _tap_sums(values[n.input[0]], kernel, _attrs(n))
            sums[n.name] = sums[n.name] + s if n.name in sums else s
            counts[n.name] = counts.get(n.name, 0) + c
    return {name: sums[name] / counts[name] for name in sums}


def weight_error(weight: np.ndarray, per_channel: bool) -> np.ndarray:
    """``dequant(quant(weight)) - weight`` under ONNX Runtime's symmetric INT8 weight quantization
    (one scale per tensor, or per output channel along axis 0), computed by its own quantizer."""
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import quantize_data

    def rounded(w: np.ndarray) -> np.ndarray:
        zp, scale, q = quantize_data(w.flatten(), TensorProto.INT8, True, reduce_range=False)
        return ((q.astype(np.float64) - np.float64(zp)) * np.float64(scale)).reshape(w.shape)

    w = weight.astype(np.float32)
    deq = np.stack([rounded(w[o]) for o in range(w.shape[0])]) if per_channel else rounded(w)
    return deq - w.astype(np.float64)


def output_shift(weight: np.ndarray, means: np.ndarray, group: int, per_channel: bool) -> np.ndarray:
    """Expected shift of each output channel's mean caused by rounding ``weight`` (O, C/g, kh, kw)
    to INT8, for taps whose mean inputs are ``means`` (C, kh, kw)."""
    dw = weight_error(weight, per_channel)
    o, cg, kh, kw = dw.shape
    by_group = dw.reshape(group, o // group, cg, kh, kw)
    m = means.reshape(group, cg, kh, kw)
    return np.einsum("gocab,gcab->go", by_group, m).reshape(o)


def correct_biases(src: Path, dst: Path, means: dict[str, np.ndarray], *, per_channel: bool) -> dict[str, float]:
    """Write ``src`` to ``dst`` with each measured convolution's bias reduced by the shift its
    INT8 weights would add (a new bias initializer per node; convolutions without a bias get one).
    Returns {node name: largest absolute shift removed}."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(src))
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    done: dict[str, float] = {}
    for n in _correctable(graph):
        if n.name not in means:
            continue
        weight = numpy_helper.to_array(inits[n.input[1]])
        group = int(_attrs(n).get("group", 1))
        if means[n.name].shape != (weight.shape[1] * group, *weight.shape[2:]):
            continue
        shift = output_shift(weight, means[n.name], group, per_channel)
        bias = (numpy_helper.to_array(inits[n.input[2]]).astype(np.float64) if len(n.input) > 2 and n.input[2]
                else np.zeros(weight.shape[0]))
        name = f"{n.name}.bias_corrected"
        graph.initializer.append(numpy_helper.from_array((bias - shift).astype(np.float32), name))
        if len(n.input) > 2:
            n.input[2] = name
        else:
            n.input.append(name)
        done[n.name] = float(np.abs(shift).max()) if shift.size else 0.0
    used = {t for n in graph.node for t in n.input}
    unused = [i for i in graph.initializer if i.name not in used]
    for i in unused:  # the replaced biases
        graph.initializer.remove(i)
    onnx.save(proto, str(dst))
    return done
