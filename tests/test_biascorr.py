"""Bias correction of INT8 weight error: the weight error is ONNX Runtime's own rounding, and the
corrected bias gives each convolution's INT8-weight output the float output's per-channel mean
(padding, stride and groups included); the search scores corrected candidates beside the others."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compress.quantize import biascorr, int8
from compress.quantize.api import quantize_artifact
from compress.quantize.calib import ArrayReader
from tests.test_quantize import quick
from tests.test_serve import digits_onnx  # noqa: F401  (a session fixture: tiny digits model)

RNG = np.random.default_rng(0)


def _weights(out_c: int, in_c: int, k: int) -> np.ndarray:
    """Channels whose scales differ 100x, so per-tensor rounding is coarse for the small ones."""
    scale = np.geomspace(0.01, 1.0, out_c).reshape(-1, 1, 1, 1)
    return (RNG.standard_normal((out_c, in_c, k, k)) * scale).astype(np.float32)


def _chain(path: Path, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray) -> Path:
    """x (N,4,9,9) -> conv1 (3x3, stride 2, pad 1, bias) -> a -> conv2 (depthwise 3x3, pad 1, no bias) -> y."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="conv1", strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w2"], ["y"], name="conv2", group=w2.shape[0], pads=[1, 1, 1, 1])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4, 9, 9])],
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, None),
                           helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
                           numpy_helper.from_array(w2, "w2")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _run(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    sess = int8._unoptimised_session(path)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x})))


def _with_weights(src: Path, dst: Path, weights: dict[str, np.ndarray]) -> Path:
    """``src`` with the named convolutions' weights replaced (by node name)."""
    proto = onnx.load(str(src))
    inits = {i.name: i for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.name in weights:
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(weights[node.name], node.input[1]))
    onnx.save(proto, str(dst))
    return dst


def _tap_sums_by_definition(x, kernel, strides, dilations, pads):
    """Every (image, output position, tap) visited one at a time: the input value that tap
    multiplies, zero where it falls on the padding."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw), (top, left, bottom, right) = kernel, strides, dilations, pads
    ho = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    wo = (w + left + right - dw * (kw - 1) - 1) // sw + 1
    sums = np.zeros((c, kh, kw))
    for i in range(ho):
        for j in range(wo):
            for a in range(kh):
                for b in range(kw):
                    y, xx = i * sh + a * dh - top, j * sw + b * dw - left
                    if 0 <= y < h and 0 <= xx < w:
                        sums[:, a, b] += x[:, :, y, xx].sum(axis=0)
    return sums, n * ho * wo


@pytest.mark.parametrize("attrs", [
    {},  # ONNX defaults: stride 1, no dilation, no padding
    {"strides": [2, 1], "pads": [1, 0, 2, 1]},
    {"dilations": [2, 1], "pads": [0, 2, 1, 0]},
    {"strides": [1, 2], "dilations": [1, 2], "pads": [2, 1, 0, 2]},
])
def test_tap_sums_match_the_definition_on_non_square_inputs(attrs):
    x = RNG.standard_normal((2, 3, 7, 10))
    sums, count = biascorr._tap_sums(x, (3, 2), attrs)
    want, want_count = _tap_sums_by_definition(x, (3, 2), attrs.get("strides", [1, 1]),
                                               attrs.get("dilations", [1, 1]), attrs.get("pads", [0, 0, 0, 0]))
    assert count == want_count
    np.testing.assert_allclose(sums, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("per_channel", [False, True])
def test_weight_error_is_onnx_runtimes_own_rounding(per_channel, tmp_path):
    """W + weight_error(W) equals the weights ONNX Runtime's quantizer stores (dequantized) in a
    QDQ graph with symmetric INT8 weights, per tensor or per output channel."""
    w1, w2 = _weights(6, 4, 3), _weights(6, 1, 3)
    src = _chain(tmp_path / "f.onnx", w1, np.zeros(6, np.float32), w2)
    x = RNG.uniform(0, 2, (8, 4, 9, 9)).astype(np.float32)
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    dst = tmp_path / "q.onnx"
    quantize_static(str(src), str(dst), ArrayReader("x", x), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=False,
                    extra_options={"WeightSymmetric": True})
    proto = onnx.load(str(dst))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    stored = {}
    for n in proto.graph.node:
        if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None and inits[n.input[0]].ndim == 4:
            q, scale, zp = (inits[t] for t in n.input[:3])
            shape = (-1, 1, 1, 1) if scale.ndim else ()
            stored[n.output[0]] = (q.astype(np.float64) - zp.reshape(shape)) * scale.reshape(shape)
    convs = {n.name: n for n in proto.graph.node if n.op_type == "Conv"}
    for name, w in (("conv1", w1), ("conv2", w2)):
        expected = stored[convs[name].input[1]]
        assert np.allclose(w + biascorr.weight_error(w, per_channel), expected, rtol=0, atol=1e-7)
    assert np.abs(biascorr.weight_error(w1, per_channel)).max() > 0


@pytest.mark.parametrize("per_channel", [False, True])
def test_corrected_bias_restores_each_channels_mean_output(per_channel, tmp_path):
    """With one convolution's weights rounded to INT8 and its bias corrected, its output's
    per-channel mean over the calibration images equals the float graph's (to float error), where
    the uncorrected one is off by far more: a strided, padded dense convolution with a bias and a
    depthwise one without, fed by a non-zero-mean input."""
    w1, b1, w2 = _weights(6, 4, 3), RNG.standard_normal(6).astype(np.float32), _weights(6, 1, 3)
    src = _chain(tmp_path / "f.onnx", w1, b1, w2)
    x = (RNG.uniform(0, 2, (32, 4, 9, 9)) + np.arange(4).reshape(1, 4, 1, 1)).astype(np.float32)
    means = biascorr.tap_means(src, x, tmp_path)
    assert set(means) == {"conv1", "conv2"} and means["conv1"].shape == (4, 3, 3)
    fixed = tmp_path / "bc.onnx"
    shifts = biascorr.correct_biases(src, fixed, means, per_channel=per_channel)
    assert set(shifts) == {"conv1", "conv2"}
    reference = _run(src, x)
    for name, tensor, w in (("conv1", "a", w1), ("conv2", "y", w2)):
        rounded = {name: (w + biascorr.weight_error(w, per_channel)).astype(np.float32)}
        alone = biascorr.correct_biases(src, tmp_path / f"bc-{name}.onnx", {name: means[name]},
                                        per_channel=per_channel)  # the other layer exactly as in float
        assert set(alone) == {name}
        plain = _run(_with_weights(src, tmp_path / f"plain-{name}.onnx", rounded), x)[tensor]
        corrected = _run(_with_weights(tmp_path / f"bc-{name}.onnx", tmp_path / f"bcq-{name}.onnx", rounded),
                         x)[tensor]
        want = reference[tensor].mean(axis=(0, 2, 3))
        off_before = np.abs(plain.mean(axis=(0, 2, 3)) - want).max()
        off_after = np.abs(corrected.mean(axis=(0, 2, 3)) - want).max()
        assert off_after < 1e-4 and off_before > 100 * off_after, (name, off_before, off_after)
    # the conv without a bias got one; the replaced bias initializer is gone
    proto = onnx.load(str(fixed))
    assert [len(n.input) for n in proto.graph.node] == [3, 3]
    assert "b1" not in {i.name for i in proto.graph.initializer}


@pytest.mark.parametrize("mode", ["auto", "on", "off"])
def test_search_scores_bias_corrected_candidates(mode, digits_onnx, tmp_path):
    """auto scores every calibration with and without the correction and writes the most agreeing
    passing one; on and off pin the axis; the choice is recorded in the report and the history."""
    cfg = quick(bias_correction=mode, quant_format="qoperator", types="u8s8", per_channel="off",
                calibration="minmax", min_agreement=0.5, mixed=False)
    result = quantize_artifact(digits_onnx, tmp_path / "q.onnx", cfg)
    scored = [t for t in result.trials if t["agreement"] is not None]
    want = {"auto": {False, True}, "on": {True}, "off": {False}}[mode]
    assert {t["bias_corrected"] for t in scored} == want
    assert all(("+bias corr." in t["label"]) == t["bias_corrected"] for t in result.trials)
    assert result.chosen["agreement"] == max(t["agreement"] for t in scored)
    from compress.onnx_meta import read_onnx_meta

    history = read_onnx_meta(tmp_path / "q.onnx").history[-1]
    assert history["params"]["bias_corrected"] == result.chosen["bias_corrected"]
