"""Quantization-aware training (compress/quantize/qat.py): the fake quantization is ONNX Runtime's
(weights bit for bit, activation parameters, biases, the tensors it quantizes), gradients pass
straight through inside the range, observers calibrate and freeze, and the INT8 stage runs QAT
when post-training quantization refuses (and only then, in auto mode), writing a QDQ graph whose
history says so."""
from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import numpy_helper

from compress.cli import main
from compress.quantize import int8, qat
from compress.quantize.api import quantize_artifact
from compress.quantize.calib import QuantData
from compress.quantize.config import QuantizeConfig
from tests.test_serve import digits_onnx  # noqa: F401  (a session fixture: tiny digits model)

# One structure (the search is then a single build, timing and scoring) and a few QAT steps.
QUICK = dict(calib_samples=16, eval_samples=120, budget=0.05, threads=1, test=False, quant_format="qdq",
             types="u8s8", per_channel="off", calibration="minmax", max_exclude=0, qat_epochs=1,
             max_steps_per_epoch=2, train_limit=64, batch_size=16)


def quick(**kw) -> QuantizeConfig:
    return QuantizeConfig(int8=True, **{**QUICK, **kw})


class TinyNet(nn.Module):
    """The operators the zoo uses, small: Conv-BN-ReLU6, depthwise Conv-BN-HardSwish, a
    squeeze-excitation (GlobalAveragePool, Conv, ReLU, Conv, HardSigmoid, Mul), a residual Add
    and a Linear head."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6()
        self.dw, self.bn2, self.act2 = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), \
            nn.Hardswish()
        self.pool, self.fc1, self.relu, self.fc2, self.gate = nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 4, 1), \
            nn.ReLU(), nn.Conv2d(4, 8, 1), nn.Hardsigmoid()
        self.pw, self.bn3 = nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        a = self.act1(self.bn1(self.conv1(x)))
        y = self.act2(self.bn2(self.dw(a)))
        y = y * self.gate(self.fc2(self.relu(self.fc1(self.pool(y)))))
        y = self.bn3(self.pw(y)) + a
        return self.head(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


def tiny_net(seed: int = 0) -> nn.Module:
    """A TinyNet with BatchNorm statistics far from the identity, so folding changes the weights."""
    torch.manual_seed(seed)
    net = TinyNet()
    for bn in (net.bn1, net.bn2, net.bn3):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.2, 3.0)
        bn.weight.data.uniform_(0.5, 2.0)
        bn.bias.data.uniform_(-0.3, 0.3)
    return net.eval()


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)


def export(model: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(images(2)),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


def ort_int8(float_path: Path, calib: np.ndarray, types: str, per_channel: bool, work: Path) -> Path:
    """ONNX Runtime's static QDQ INT8 of ``float_path`` as the stage builds it (pre-processed, MinMax)."""
    pre, out = work / "pre.onnx", work / f"int8-{types}-{per_channel}.onnx"
    int8.preprocess_graph(float_path, pre)
    cache = work / f"cache-{types}-{per_channel}"
    cache.mkdir()
    int8.quantize_candidate(pre, out, int8.Candidate("qdq", types, per_channel), QuantData(calib=calib, eval=calib),
                            "input", cache)
    return out


def dequantized_weights(path: Path) -> list[np.ndarray]:
    """The weight of every Conv/Gemm of a QDQ graph, in node order, as ONNX Runtime runs it:
    (q - zero_point) * scale of its DequantizeLinear initializers."""
    proto = onnx.load(str(path))
    init = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    out = []
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        dq = producer[node.input[1]]
        assert dq.op_type == "DequantizeLinear"
        q, scale, zp = (init[name] for name in dq.input[:3])
        shape = [-1] + [1] * (q.ndim - 1) if scale.ndim else []
        out.append((q.astype(np.float32) - zp.astype(np.float32).reshape(shape)) * scale.reshape(shape))
    return out


def run_ort(path: Path, x: np.ndarray) -> np.ndarray:
    from compress.runtime import OnnxRunner

    return OnnxRunner(path, 1).predict(x)


# ----------------------------------------------------------------------------- fake quantization = ORT

@pytest.mark.parametrize("per_channel", [True, False])
def test_fake_quant_weights_equal_onnx_runtimes_int8_weights(per_channel, tmp_path):
    """The folded network's fake-quantized Conv and Linear weights are bit for bit the weights
    ONNX Runtime's QDQ graph of the exported folded network holds."""
    calib = images(16)
    folded = qat.fold_for_qat(tiny_net(), torch.from_numpy(calib[:2]))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    graph = ort_int8(export(folded, tmp_path / "folded.onnx"), calib, "s8s8", per_channel, tmp_path)
    ours = [qat.quantize_weight(m.weight.detach(), per_channel).numpy()
            for m in folded.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    theirs = dequantized_weights(graph)
    assert len(ours) == len(theirs) == 6
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and np.array_equal(a, b)
    levels = [np.unique(np.round(w / qat.weight_scale(torch.from_numpy(w), per_channel).numpy())) for w in ours]
    assert all(lv.min() >= -127 and lv.max() <= 127 for lv in levels)


def test_activation_parameters_are_onnx_runtimes():
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    rng = np.random.default_rng(0)
    # (0, 0): an activation that is always zero, where ONNX Runtime falls back to scale 1, zero point 0
    for lo, hi in [(-1.3, 4.2), (0.0, 6.0), (0.5, 2.0), (-3.0, -0.25), (0.0, 0.0), *rng.uniform(-5, 5, (20, 2)).tolist()]:
        lo, hi = min(lo, hi), max(lo, hi)
        rmin, rmax = np.array(lo, np.float32), np.array(hi, np.float32)
        for types, (qmin, qmax, symmetric), dtype in (("u8s8", (0, 255, False), np.uint8),
                                                      ("s8s8", (-127, 127, True), np.int8)):
            zp, scale = compute_scale_zp(rmin, rmax, dtype(qmin), dtype(qmax), symmetric=symmetric)
            ours_scale, ours_zp = qat.activation_qparams(torch.tensor(lo), torch.tensor(hi), types)
            assert ours_scale.dtype == torch.float32 and float(ours_scale) == float(scale), (types, lo, hi)
            assert ours_zp.shape == () and int(ours_zp) == int(zp), (types, lo, hi)


@pytest.mark.parametrize("types", ["u8s8", "s8s8"])
def test_fake_quant_network_tracks_onnx_runtimes_int8_graph(types, tmp_path):
    """Calibrated on the same images, the fake-quantized network's logits are far closer to ONNX
    Runtime's INT8 graph than the float network's are (same tensors quantized, same ranges, biases
    in INT32, HardSwish's gate quantized as the exporter writes it)."""
    calib, held_out = images(32, seed=1), images(64, seed=2)
    net = tiny_net()
    sim = qat.prepare_qat(net, torch.from_numpy(calib[:2]), types=types, per_channel=False)
    qat.calibrate(sim, calib)
    folded = qat.fold_for_qat(net, torch.from_numpy(calib[:2]))
    exported = export(folded, tmp_path / "folded.onnx")
    graph = ort_int8(exported, calib, types, False, tmp_path)
    with torch.no_grad():
        fake = sim.eval()(torch.from_numpy(held_out)).numpy()
        fp32 = folded(torch.from_numpy(held_out)).numpy()
    real = run_ort(graph, held_out)
    float_gap, sim_gap = int8.sqnr_db(real, fp32), int8.sqnr_db(real, fake)
    assert sim_gap > float_gap + 20, (sim_gap, float_gap)
    assert np.mean(fake.argmax(1) == real.argmax(1)) >= 0.98


class ReluTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.a(x)
        z = self.b(torch.relu(y))  # y has a second consumer below: its range is its own
        return F.relu6(z) + y


def test_quantized_tensors_are_the_ones_onnx_runtime_quantizes():
    """Inputs and outputs of Conv/Gemm/Add/Mul/GlobalAveragePool (HardSigmoid's output as a Mul
    input); a Relu/Clip that is the only consumer of its input lends that input its range (one
    quantization: the clipped values)."""
    calib = torch.from_numpy(images(2))
    for types in ("u8s8", "s8s8"):
        names = {n.name for n in qat.quantized_tensors(qat.fold_for_qat(tiny_net(), calib), types)}
        assert {"x", "act1", "dw", "act2", "pool", "relu", "fc2", "gate", "mul", "pw", "add", "head"} <= names
        assert not names & {"conv1", "fc1"}  # the Relu6 / Relu after them lend them their range
        names = {n.name for n in qat.quantized_tensors(qat.fold_for_qat(ReluTwice(), calib), types)}
        assert names == {"x", "a", "relu", "relu6", "add"}, names  # b lends its range to relu6


# ----------------------------------------------------------------------------- STE and observers

def test_straight_through_gradient_inside_the_range_only():
    x = torch.tensor([-3.0, -1.0, -0.26, 0.0, 0.3, 1.0, 2.54, 2.56, 5.0], requires_grad=True)
    scale, zp = torch.tensor(0.01), torch.tensor(0.0)
    y = qat.fake_quantize(x, scale, zp, -127, 127)  # representable: [-1.27, 1.27]
    y.backward(torch.arange(1.0, 10.0))
    inside = (x.detach().abs() <= 1.27).float()
    assert torch.equal(x.grad, torch.arange(1.0, 10.0) * inside)
    assert torch.allclose(y.detach(), torch.clamp(torch.round(x.detach() / 0.01), -127, 127) * 0.01)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)  # weights: max|w| maps to 127, nothing clipped
    qat.quantize_weight(w, per_channel=True).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_observers_calibrate_track_and_freeze():
    q = qat.ActivationQuant("u8s8").eval()
    x = torch.linspace(-1.0, 3.0, 50)
    assert torch.equal(q(x), x) and not q.observed  # evaluation without a range: passes through
    q.start_calibration()
    assert torch.equal(q(x), x) and torch.equal(q(x * 2), x * 2)  # calibrating: float, exact min/max
    q.stop_calibration()
    assert (float(q.min_val), float(q.max_val)) == (-2.0, 6.0)
    q.train()
    q(torch.full((4,), 10.0))  # training: the range follows a moving average
    assert float(q.max_val) == pytest.approx(6.0 + qat.EMA * 4.0)
    before = (q.min_val.clone(), q.max_val.clone())
    q.eval()
    q(torch.full((4,), 100.0))  # evaluation never moves it
    assert torch.equal(q.max_val, before[1])
    q.freeze()
    q.train()
    out = q(torch.full((4,), 100.0))  # frozen: fixed range, values clipped to it
    assert torch.equal(q.min_val, before[0]) and torch.equal(q.max_val, before[1])
    scale, zp = q.qparams()
    assert torch.allclose(out, (255 - zp) * scale)


def test_calibrate_sees_float_weights_and_freeze_holds_during_training():
    net = tiny_net()
    calib = images(8)
    gm = qat.prepare_qat(net, torch.from_numpy(calib[:2]), types="u8s8", per_channel=False)
    qat.calibrate(gm, calib, freeze=True)
    graph_quants = [gm.get_submodule(n.target) for n in gm.graph.nodes
                    if n.op == "call_module" and isinstance(gm.get_submodule(n.target), qat.ActivationQuant)]
    first, last = graph_quants[0], graph_quants[-1]  # the input's and the logits'
    assert float(first.min_val) == pytest.approx(float(calib.min())) and float(first.max_val) == \
        pytest.approx(float(calib.max()))
    folded = qat.fold_for_qat(net, torch.from_numpy(calib[:2]))
    with torch.no_grad():  # the logits observer saw the float network's logits, not the fake-quant ones
        ref = folded(torch.from_numpy(calib)).numpy()
    assert (float(last.min_val), float(last.max_val)) == pytest.approx((ref.min(), ref.max()), rel=1e-5)
    ranges = [(float(m.min_val), float(m.max_val)) for m in qat.activation_quants(gm)]
    gm.train()
    gm(torch.from_numpy(images(8, seed=5) * 3)).sum().backward()
    assert [(float(m.min_val), float(m.max_val)) for m in qat.activation_quants(gm)] == ranges
    plain = qat.strip_qat(gm)
    assert not qat.activation_quants(plain) and not any(isinstance(m, qat.GatedActivation) for m in plain.modules())
    with torch.no_grad():
        assert torch.allclose(plain(torch.from_numpy(calib)), torch.from_numpy(ref), atol=1e-5)


# ----------------------------------------------------------------------------- the INT8 stage

def test_auto_runs_qat_when_post_training_quantization_refuses(digits_onnx, tmp_path):
    """At 100% agreement the barely trained digits model's PTQ refuses; auto mode then fine-tunes
    its .safetensors artifact and scores the QAT candidate; still short of 100%, nothing is written
    and the refusal reports the QAT attempt."""
    out = tmp_path / "q.onnx"
    with pytest.raises(int8.QuantizationRefused) as caught:
        quantize_artifact(digits_onnx.with_suffix(".safetensors"), out, quick(min_agreement=1.0))
    result = caught.value.result
    assert result.qat["needed"] and result.qat["ran"] and result.qat["why"].startswith("PTQ best agreement")
    assert result.qat["epochs"] == 1 and result.qat["distill"] and result.qat["steps"] == 2
    # QAT's distillation weight is its own (--qat-kd-alpha, default 1: the fp32 model alone), not --kd-alpha's 0.7
    assert result.qat["run"]["criterion"]["alpha"] == 1.0 and QuantizeConfig().kd_alpha == 0.7
    ptq = [t for t in result.trials if not t.get("qat")]
    assert [t["bias_corrected"] for t in ptq] == [False, True]  # scored as is and bias-corrected
    assert result.qat["agreement_before"] == max(t["agreement"] for t in ptq) == result.qat["ptq_best_agreement"]
    assert result.qat["agreement_after"] < 1.0
    assert [t["label"] for t in result.trials if t.get("qat")] == ["QAT QDQ U8S8 per-tensor minmax"]
    assert "quantization-aware" in str(caught.value)
    assert not out.exists() and not (tmp_path / "q.onnx.json").exists()


def test_auto_skips_qat_when_post_training_quantization_passes(digits_onnx, tmp_path):
    out = tmp_path / "q.onnx"
    result = quantize_artifact(digits_onnx.with_suffix(".safetensors"), out, quick(min_agreement=0.5))
    assert result.qat["needed"] is False and result.qat["ran"] is False and "PTQ reached" in result.qat["why"]
    assert not any(t.get("qat") for t in result.trials) and not result.chosen["label"].startswith("QAT")
    history = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["history"])
    assert history[-1]["params"]["qat"]["ran"] is False
    from compress.report.quantize import format_quantize

    assert "QAT: not run, not needed (PTQ reached" in format_quantize(result)


def test_auto_does_not_fine_tune_an_onnx_input(digits_onnx, tmp_path):
    with pytest.raises(int8.QuantizationRefused) as caught:
        quantize_artifact(digits_onnx, tmp_path / "q.onnx", quick(min_agreement=1.0))
    assert caught.value.result.qat["needed"] and not caught.value.result.qat["ran"]
    assert ".safetensors" in caught.value.result.qat["why"] and ".safetensors" in str(caught.value)


def test_qat_on_writes_a_qdq_int8_graph_with_a_qat_history_record(digits_onnx, tmp_path, capsys):
    out = tmp_path / "q.onnx"
    code = main(["quantize", str(digits_onnx.with_suffix(".safetensors")), "--int8", "--qat", "on", "--quiet",
                 "--min-agreement", "0.5", "-o", str(out), "--format", "qdq", "--types", "s8s8",
                 "--per-channel", "on", "--calibration", "minmax", "--calib-samples", "16", "--eval-samples", "120",
                 "--budget", "0.05", "--threads", "1", "--no-test", "--qat-epochs", "2", "--max-steps-per-epoch",
                 "2", "--train-limit", "64", "--batch-size", "16", "--lr", "0.05"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    proto = onnx.load(str(out))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    weights = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert weights and not any(i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 4
                               for i in proto.graph.initializer)  # every conv weight is INT8
    record = json.loads({p.key: p.value for p in proto.metadata_props}["history"])[-1]
    assert record["stage"] == "quantize" and record["params"]["qat"]["ran"] is True
    assert record["params"]["qat"]["needed"] is False and "--qat on" in record["params"]["qat"]["why"]
    assert record["params"]["qat"]["epochs"] == 2 and record["params"]["qat"]["agreement_after"] >= 0.5
    report = json.loads((tmp_path / "q.onnx.json").read_text())
    assert report["chosen"]["label"] == "QAT QDQ S8S8 per-channel minmax" and report["chosen"]["qat"]
    assert report["qat"]["run"]["steps"] == 4 and report["qat"]["run"]["activation_points"] > 0
    assert "chosen: QAT QDQ S8S8 per-channel minmax" in printed and "QAT: ran, not needed" in printed
    # agreement is with the fp32 *input* model's decisions (not the fine-tuned model's), as for PTQ
    from compress.onnx_meta import read_onnx_meta
    from compress.quantize.calib import quantization_data

    data = quantization_data(read_onnx_meta(digits_onnx), None, calib_samples=16, eval_samples=120, test=False)
    fp32, int8_graph = (int8.decisions(run_ort(p, data.eval), "multiclass") for p in (digits_onnx, out))
    assert report["chosen"]["agreement"] == pytest.approx(int8.agreement(int8_graph, fp32))


@pytest.mark.parametrize("case", ["onnx-input", "dynamic"])
def test_qat_on_without_a_pytorch_model_exits_2_with_one_line(case, digits_onnx, tmp_path, capsys):
    src = digits_onnx if case == "onnx-input" else digits_onnx.with_suffix(".safetensors")
    mode = ["--int8"] if case == "onnx-input" else ["--dynamic"]
    out = tmp_path / "q.onnx"
    code = main(["quantize", str(src), *mode, "--qat", "on", "--quiet", "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("compress quantize: error:") and "Traceback" not in err
    assert ("safetensors" if case == "onnx-input" else "--int8") in err
    assert not out.exists()


def test_qat_epochs_must_be_positive():
    from compress.errors import UserError

    with pytest.raises(UserError, match="qat-epochs"):
        QuantizeConfig(int8=True, qat_epochs=0).validate()
    with pytest.raises(UserError, match="--qat"):
        QuantizeConfig(int8=True, qat="maybe").validate()
