"""Quantization-aware fine-tuning (QAT) for ONNX Runtime's static INT8, for when post-training
quantization (the search of :mod:`compress.quantize.int8`) loses too much agreement.

    from compress.quantize.qat import quantization_aware_finetune
    run = quantization_aware_finetune("base.safetensors", cfg, types="s8s8", per_channel=False,
                                      calib=data.calib)
    export_onnx(run.model, run.meta, "qat.onnx")    # then quantized by ONNX Runtime, MinMax

What is simulated is what ONNX Runtime's static quantizer will do to the exported graph, so the
weights learn to live with exactly that error:

* **BatchNorm folded first** (:func:`compress.export.fold_batchnorm`): the exporter folds it too,
  so the weights ONNX Runtime quantizes are the folded ones, and so are the ones fake-quantized
  here.
* **Weights**: symmetric INT8 in [-127, 127], one scale per output channel or per tensor,
  ``scale = max|w| / 127`` (computed in float64 and stored in float32, ``round`` half to even):
  the dequantized weights equal ONNX Runtime's bit for bit (``tests/test_quantize_qat.py``).
* **Activations**: every tensor ONNX Runtime's QDQ quantizer puts a QuantizeLinear on: the inputs
  and outputs of Conv/Gemm and of the other quantized operators (Add, Mul, Sigmoid, SiLU's
  Sigmoid·Mul, GlobalAveragePool, Concat, Relu/Clip), reshapes and max-pooling passing the grid
  through; ``u8s8``: UINT8 asymmetric over [min(rmin, 0), max(rmax, 0)], ``s8s8``: INT8
  symmetric in [-127, 127]. The input of a Relu/Clip that is its only consumer takes the
  Relu/Clip's output range in ONNX Runtime (``adjust_tensor_ranges``), so only the clipped values
  are quantized. HardSigmoid is not a quantized operator, but the exporter writes HardSwish as
  ``x * HardSigmoid(x)`` and SiLU as ``x * Sigmoid(x)``, and that gate is a Mul input: quantized.
  Biases are INT32 with ``scale = input scale x weight scale``, as ONNX Runtime stores them.
* **Ranges**: observers first take the exact minimum and maximum over the calibration images
  with quantization off (ONNX Runtime's MinMax calibration of the float graph), follow an
  exponential moving average (0.01) of each batch's minimum and maximum while training, and at
  the start of the last epoch (halfway through a single one) are calibrated again under the
  current weights and frozen, so the last steps adapt the weights to fixed ranges.
* **Gradients**: straight-through estimator — rounding passes the gradient unchanged where the
  value lies inside the quantized range, and none where it is clipped; scales are constants.

The fine-tuning runs through the one training loop (:func:`compress.training.loop.fit`; its
validation and best-epoch choice see the fake-quantized network), distilled from the fp32 input
model by default. Dropout is removed for it (its train-time scaling would stretch the observed
ranges). The result is a plain fp32 module (BatchNorm folded, fake quantization removed) whose
weights are adapted to INT8; the caller exports it and lets ONNX Runtime quantize it with the same
structure and MinMax ranges from the same calibration images. QOperator graphs are simulated by
the same rules (their quantized tensors are the same ones).

Measured (PP-LCNet x0.25, 3 epochs on Fashion-MNIST, 88.43% test; agreement with the fp32 model
on 2,000 validation images): the fake-quantized network's logits are 40-55 dB from ONNX Runtime's
INT8 logits (fp32's are 19-23 dB away), with the same decision on every image. QAT pays where
post-training quantization loses a lot — QDQ S8S8 per-channel MinMax 90.05% → 95.10% after 2
epochs with the other stages' kd weight 0.7 (95.75% with 1.0, pure distillation) — not at the last
percent: QOperator U8S8 per-tensor 98.30% → 96.60% (98.15% with 1.0), the fine-tuning itself
moving the decisions of images near a class boundary about as much as it removes INT8 error.
Pure distillation won both times, so QAT's own weight ``--qat-kd-alpha`` defaults to 1.0.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import operator
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from ..errors import UserError
from ..training.callbacks import TrainCallback
from .int8 import Trial

Log = Callable[[str], None]

WEIGHT_QMIN, WEIGHT_QMAX = -127, 127  # ONNX Runtime's symmetric INT8 weights
# activation types: (qmin, qmax, symmetric) as ONNX Runtime's quantizer sets them
ACTIVATION_RANGES = {"u8s8": (0, 255, False), "s8s8": (-127, 127, True)}
EMA = 0.01  # weight of a batch's min/max in the moving average while training
_TINY = float(np.finfo(np.float32).tiny)  # below this ONNX Runtime uses scale 1


# ----------------------------------------------------------------------------- fake quantization

class _FakeQuantize(torch.autograd.Function):
    """``(clamp(round(x / scale) + zp, qmin, qmax) - zp) * scale``, with the straight-through
    gradient: 1 where ``round(x / scale) + zp`` lies in [qmin, qmax], 0 where it is clipped."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin: int, qmax: int):
        q = torch.round(x / scale) + zero_point
        inside = (q >= qmin) & (q <= qmax)
        ctx.save_for_backward(inside)
        return (q.clamp(qmin, qmax) - zero_point) * scale

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | float, qmin: int,
                  qmax: int) -> torch.Tensor:
    """``x`` quantized to integers in [qmin, qmax] with ``scale`` and ``zero_point`` (broadcast
    against ``x``) and dequantized; gradients pass straight through inside the range. Division
    (not multiplication by 1/scale) and round-half-to-even, as ONNX Runtime quantizes weights."""
    return _FakeQuantize.apply(x, scale, zero_point, qmin, qmax)


def weight_scale(weight: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """ONNX Runtime's symmetric INT8 weight scale: ``max|w| / 127`` per output channel (axis 0,
    shaped to broadcast against ``weight``) or per tensor; float64 arithmetic, float32 result, 1
    where the weights are all zero."""
    with torch.no_grad():
        a = weight.detach().abs()
        absmax = a.flatten(1).amax(1) if per_channel and a.ndim > 1 else a.amax()
        scale = (absmax.double() / WEIGHT_QMAX)
        scale = torch.where(scale < _TINY, torch.ones_like(scale), scale).float()
        return scale.view(-1, *([1] * (weight.ndim - 1))) if scale.ndim else scale


def quantize_weight(weight: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """The weight as ONNX Runtime's INT8 graph will hold it (dequantized), with a
    straight-through gradient."""
    return fake_quantize(weight, weight_scale(weight, per_channel), 0.0, WEIGHT_QMIN, WEIGHT_QMAX)


def activation_qparams(rmin: torch.Tensor, rmax: torch.Tensor, types: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale float32, zero point) for an activation observed in [rmin, rmax], as ONNX Runtime's
    ``compute_scale_zp`` computes them: the range widened to include 0 (and made symmetric for
    s8s8), ``scale = range / (qmax - qmin)`` in float64, ``zp = round(qmin - rmin / scale)``."""
    qmin, qmax, symmetric = ACTIVATION_RANGES[types]
    lo = torch.clamp(rmin.double(), max=0.0)
    hi = torch.clamp(rmax.double(), min=0.0)
    if symmetric:
        hi = torch.maximum(-lo, hi)
        lo = -hi
    scale = (hi - lo) / (qmax - qmin)
    if float(scale) < _TINY:
        return torch.ones((), dtype=torch.float32, device=rmin.device), torch.zeros((), device=rmin.device)
    zp = torch.zeros((), dtype=torch.float64, device=rmin.device) if symmetric else torch.round(qmin - lo / scale)
    return scale.float(), zp.float()


class WeightQuant(nn.Module):
    """A parametrization of a Conv2d/Linear weight: the weight ONNX Runtime will run."""

    def __init__(self, per_channel: bool):
        super().__init__()
        self.per_channel = per_channel
        self.enabled = True  # off while calibrating: ONNX Runtime calibrates the float graph

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return quantize_weight(weight, self.per_channel) if self.enabled else weight


class BiasQuant(nn.Module):
    """A parametrization of a Conv2d/Linear bias: INT32 with ``scale = input scale x weight scale``
    (float32), as ONNX Runtime stores it; gradients pass straight through. Identity while the
    input's range is unknown or being calibrated."""

    def __init__(self, layer: nn.Module, input_quant: "ActivationQuant", per_channel: bool):
        super().__init__()
        # plain references, not submodules: both already live elsewhere in the network
        object.__setattr__(self, "_layer", layer)
        object.__setattr__(self, "_input", input_quant)
        self.per_channel = per_channel

    def forward(self, bias: torch.Tensor) -> torch.Tensor:
        inq = self._input
        if inq.calibrating or not inq.observed:
            return bias
        w = self._layer.parametrizations.weight.original
        scale = (inq.qparams()[0] * weight_scale(w, self.per_channel).reshape(-1)).float()
        q = torch.round(bias.detach().double() / scale.double()).clamp(-2 ** 31, 2 ** 31 - 1)
        return bias + ((q.float() * scale) - bias).detach()


class ActivationQuant(nn.Module):
    """One activation tensor ONNX Runtime quantizes: a range observer and fake quantization.

    States: *calibrating* (:meth:`start_calibration`: exact running min/max, values pass
    unquantized, like ONNX Runtime's MinMax calibration of the float graph); *tracking* (training
    mode: the range follows an exponential moving average of each batch's min/max); *frozen*
    (:meth:`freeze`: the range no longer changes). Values are fake-quantized whenever a range is
    known and the module is not calibrating. The range lives in buffers, so the training loop's
    best-epoch checkpoint keeps it with the weights."""

    def __init__(self, types: str, momentum: float = EMA):
        super().__init__()
        if types not in ACTIVATION_RANGES:
            raise ValueError(f"unknown activation/weight types {types!r}; choose one of "
                             f"{', '.join(ACTIVATION_RANGES)}")
        self.types, self.momentum = types, momentum
        self.qmin, self.qmax, _ = ACTIVATION_RANGES[types]
        self.register_buffer("min_val", torch.tensor(math.inf))
        self.register_buffer("max_val", torch.tensor(-math.inf))
        self.calibrating = False
        self.frozen = False

    @property
    def observed(self) -> bool:
        return bool(torch.isfinite(self.min_val)) and bool(torch.isfinite(self.max_val))

    def start_calibration(self) -> None:
        self.min_val.fill_(math.inf)
        self.max_val.fill_(-math.inf)
        self.calibrating, self.frozen = True, False

    def stop_calibration(self) -> None:
        self.calibrating = False

    def freeze(self) -> None:
        self.frozen = True

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = x.detach().min().float(), x.detach().max().float()
        if self.calibrating or not self.observed:
            self.min_val.copy_(torch.minimum(self.min_val, lo))
            self.max_val.copy_(torch.maximum(self.max_val, hi))
        else:
            self.min_val.lerp_(lo, self.momentum)
            self.max_val.lerp_(hi, self.momentum)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        return activation_qparams(self.min_val, self.max_val, self.types)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self._observe(x)
            return x
        if self.training and not self.frozen:
            self._observe(x)
        if not self.observed:
            return x
        scale, zp = self.qparams()
        return fake_quantize(x, scale, zp, self.qmin, self.qmax)

    def extra_repr(self) -> str:
        return f"{self.types}, range=[{float(self.min_val):.4g}, {float(self.max_val):.4g}], frozen={self.frozen}"


class GatedActivation(nn.Module):
    """HardSwish or SiLU as the ONNX export writes them, ``x * HardSigmoid(x)`` / ``x *
    Sigmoid(x)``: ONNX Runtime quantizes the gate (an input of the Mul) as a tensor of its own."""

    def __init__(self, kind: str, types: str):
        super().__init__()
        if kind not in ("hardswish", "silu"):
            raise ValueError(f"unknown gated activation {kind!r}")
        self.kind = kind
        self.gate_quant = ActivationQuant(types)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = F.hardsigmoid(x) if self.kind == "hardswish" else torch.sigmoid(x)
        return x * self.gate_quant(gate)

    def plain(self) -> nn.Module:
        return nn.Hardswish() if self.kind == "hardswish" else nn.SiLU()


# ----------------------------------------------------------------------------- where ORT quantizes

_GATED = {nn.Hardswish: "hardswish", nn.SiLU: "silu", F.hardswish: "hardswish", F.silu: "silu"}
_QUANT_MODULES = (nn.Conv2d, nn.Linear, nn.Sigmoid, nn.AdaptiveAvgPool2d, GatedActivation)
_QUANT_FUNCTIONS = {operator.add, operator.mul, torch.add, torch.mul, torch.sigmoid, torch.cat, torch.concat,
                    F.adaptive_avg_pool2d}
_QUANT_METHODS = {"add", "mul", "sigmoid"}
_CLIP_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh)  # Relu / Clip in ONNX
_CLIP_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.hardtanh}
_PASS_MODULES = (nn.MaxPool2d, nn.Flatten)  # values stay on their input's grid
_PASS_FUNCTIONS = {torch.flatten, torch.reshape, F.max_pool2d}
_PASS_METHODS = {"flatten", "view", "reshape", "squeeze", "unsqueeze", "contiguous"}
_DROP_MODULES = (nn.Dropout, nn.Identity)


def _kind(gm: torch.fx.GraphModule, node: torch.fx.Node) -> str:
    """How ONNX Runtime treats the operator of ``node``: ``quant`` (inputs and output quantized),
    ``clip`` (Relu/Clip: removable), ``pass`` (output on the input's grid), else ``other``."""
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if isinstance(m, _QUANT_MODULES):
            if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size not in (1, (1, 1)):
                return "other"
            return "quant"
        return "clip" if isinstance(m, _CLIP_MODULES) else "pass" if isinstance(m, _PASS_MODULES) else "other"
    if node.op == "call_function":
        if node.target in _QUANT_FUNCTIONS:
            return "quant"
        return "clip" if node.target in _CLIP_FUNCTIONS else "pass" if node.target in _PASS_FUNCTIONS else "other"
    if node.op == "call_method":
        return "quant" if node.target in _QUANT_METHODS else "clip" if node.target == "relu" else \
            "pass" if node.target in _PASS_METHODS else "other"
    return "other"


def _is_float_tensor(node: Any) -> bool:
    meta = getattr(node, "meta", {}).get("tensor_meta") if isinstance(node, torch.fx.Node) else None
    return meta is not None and hasattr(meta, "dtype") and meta.dtype.is_floating_point


def _tensor_inputs(node: torch.fx.Node) -> list[torch.fx.Node]:
    found: list[torch.fx.Node] = []
    torch.fx.node.map_arg((node.args, node.kwargs), lambda a: found.append(a) if _is_float_tensor(a) else None)
    return found


def quantized_tensors(gm: torch.fx.GraphModule, types: str) -> list[torch.fx.Node]:
    """The nodes of ``gm`` (shapes propagated) whose output ONNX Runtime's static QDQ quantizer
    quantizes with ``types``, in graph order (see the module docstring)."""
    def source(n: torch.fx.Node) -> torch.fx.Node:
        while _kind(gm, n) == "pass" and _tensor_inputs(n):
            n = _tensor_inputs(n)[0]
        return n

    marked: set[torch.fx.Node] = set()
    merged: set[torch.fx.Node] = set()
    for n in gm.graph.nodes:
        kind = _kind(gm, n)
        if kind not in ("quant", "clip") or not _is_float_tensor(n):
            continue
        inputs = _tensor_inputs(n)
        if kind == "clip" and inputs and len(inputs[0].users) == 1:
            # ORT gives the input of a Relu/Clip that is its only consumer the Relu/Clip's output range
            # (and, for u8s8, removes the Relu/Clip): quantizing both with it is quantizing the output
            merged.add(inputs[0])
            inputs = []
        marked.update(source(a) for a in inputs)
        marked.add(n)
    return [n for n in gm.graph.nodes if n in marked and n not in merged]


# ----------------------------------------------------------------------------- the QAT network

def fold_for_qat(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """A copy of ``model`` as a ``torch.fx`` graph with BatchNorm folded into the convolutions
    (as the ONNX export folds it) and Dropout/Identity removed; shapes propagated from ``example``."""
    from torch.fx.passes.shape_prop import ShapeProp

    from ..export import fold_batchnorm

    try:
        gm = fold_batchnorm(model)
    except Exception as e:  # torch.fx raises assorted types on untraceable control flow
        raise UserError(f"quantization-aware training needs a network torch.fx can trace "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})") from None
    for n in list(gm.graph.nodes):
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), _DROP_MODULES) and n.args:
            n.replace_all_uses_with(n.args[0])
            gm.graph.erase_node(n)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    with torch.no_grad():
        ShapeProp(gm.eval()).propagate(example)
    return gm


def prepare_qat(model: nn.Module, example: torch.Tensor, *, types: str, per_channel: bool) -> torch.fx.GraphModule:
    """The folded copy of ``model`` with every Conv2d/Linear weight fake-quantized (a
    :class:`WeightQuant` parametrization) and an :class:`ActivationQuant` after every tensor ONNX
    Runtime quantizes (:func:`quantized_tensors`). Observers start empty: :func:`calibrate` them."""
    if types not in ACTIVATION_RANGES:
        raise UserError(f"unknown INT8 types {types!r}; choose one of {', '.join(ACTIVATION_RANGES)}")
    gm = fold_for_qat(model, example)
    for i, node in enumerate(list(gm.graph.nodes)):  # HardSwish/SiLU → x * quantized gate
        fn = type(gm.get_submodule(node.target)) if node.op == "call_module" else \
            node.target if node.op == "call_function" else None
        if fn in _GATED:
            name = f"gated_{i}"
            gm.add_submodule(name, GatedActivation(_GATED[fn], types))
            with gm.graph.inserting_after(node):
                gated = gm.graph.call_module(name, (node.args[0],))
            gated.meta = dict(node.meta)
            node.replace_all_uses_with(gated)
            gm.graph.erase_node(node)
    gm.delete_all_unused_submodules()
    for m in gm.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            parametrize.register_parametrization(m, "weight", WeightQuant(per_channel))
    for i, node in enumerate(quantized_tensors(gm, types)):
        name = f"act_quant_{i}"
        gm.add_submodule(name, ActivationQuant(types))
        with gm.graph.inserting_after(node):
            q = gm.graph.call_module(name, (node,))
        node.replace_all_uses_with(q, delete_user_cb=lambda user, q=q: user is not q)
    for node in gm.graph.nodes:  # biases of layers whose input is quantized: INT32, as ORT stores them
        if node.op != "call_module" or not node.args or not isinstance(node.args[0], torch.fx.Node):
            continue
        layer, src = gm.get_submodule(node.target), node.args[0]
        if isinstance(layer, (nn.Conv2d, nn.Linear)) and layer.bias is not None and src.op == "call_module" \
                and isinstance(gm.get_submodule(src.target), ActivationQuant):
            parametrize.register_parametrization(layer, "bias", BiasQuant(layer, gm.get_submodule(src.target),
                                                                           per_channel))
    gm.recompile()
    return gm


def activation_quants(model: nn.Module) -> list[ActivationQuant]:
    return [m for m in model.modules() if isinstance(m, ActivationQuant)]


@torch.no_grad()
def calibrate(model: nn.Module, images: np.ndarray | torch.Tensor, batch: int = 32, freeze: bool = False) -> None:
    """Set every observer of ``model`` to the exact min/max of its tensor over ``images`` with
    quantization off, weights included (ONNX Runtime's MinMax calibration of the float graph);
    ``freeze`` keeps those ranges fixed.
    The model's train/eval mode is restored."""
    from ..torch_utils import model_mode

    x_all = torch.as_tensor(np.asarray(images, dtype=np.float32))
    quants = activation_quants(model)
    weights = [m for m in model.modules() if isinstance(m, WeightQuant)]
    device = next(model.parameters()).device
    for q in quants:
        q.start_calibration()
    for w in weights:
        w.enabled = False
    try:
        with model_mode(model, training=False):
            for i in range(0, len(x_all), batch):
                model(x_all[i:i + batch].to(device))
    finally:
        for w in weights:
            w.enabled = True
        for q in quants:
            q.stop_calibration()
            if freeze:
                q.freeze()


def strip_qat(model: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``model`` (in place) without fake quantization: the trained float weights as plain
    parameters, the :class:`ActivationQuant` nodes removed."""
    for m in model.modules():
        for name in ("bias", "weight"):
            if parametrize.is_parametrized(m, name):
                parametrize.remove_parametrizations(m, name, leave_parametrized=False)
    for n in list(model.graph.nodes):
        if n.op != "call_module":
            continue
        m = model.get_submodule(n.target)
        if isinstance(m, ActivationQuant):
            n.replace_all_uses_with(n.args[0])
            model.graph.erase_node(n)
        elif isinstance(m, GatedActivation):
            model.add_submodule(n.target, m.plain())
    model.delete_all_unused_submodules()
    model.recompile()
    return model.eval()


class FreezeRanges:
    """``after_step`` for the training loop: after ``at_step`` optimizer steps, calibrate the
    observers again on ``images`` under the current weights and freeze them."""

    def __init__(self, images: np.ndarray, at_step: int):
        self.images, self.at_step, self.steps = images, at_step, 0
        self.done = False

    def __call__(self, model: nn.Module) -> None:
        self.steps += 1
        if not self.done and self.steps >= self.at_step:
            calibrate(model, self.images, freeze=True)
            self.done = True


# ----------------------------------------------------------------------------- the run

@dataclass
class QatRun:
    """What :func:`quantization_aware_finetune` did. ``model`` is the plain fp32 network
    (BatchNorm folded, adapted to INT8); ``meta`` the input's metadata."""

    model: nn.Module
    meta: Any
    types: str
    per_channel: bool
    epochs: int
    steps: int
    distill: bool
    criterion: dict[str, Any]
    activation_points: int
    weight_layers: int
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_val: dict[str, float] = field(default_factory=dict)
    freeze_step: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def loss(self) -> float | None:
        """Mean training loss of the last epoch."""
        return self.history[-1].get("train_loss") if self.history else None

    def to_dict(self) -> dict[str, Any]:
        return {"types": self.types, "per_channel": self.per_channel, "epochs": self.epochs, "steps": self.steps,
                "distill": self.distill, "criterion": self.criterion, "loss": self.loss,
                "activation_points": self.activation_points, "weight_layers": self.weight_layers,
                "ranges_frozen_after_step": self.freeze_step, "best_epoch": self.best_epoch,
                "best_val_fake_quant": self.best_val, "epochs_log": self.history, "data": self.data,
                "seconds": round(self.seconds, 1)}


class _LogEpochs(TrainCallback):
    """A training-loop callback that sends one line per epoch (and the loop's notes) to ``log``."""

    def __init__(self, log: Log, epochs: int):
        self.log, self.epochs = log, epochs

    def on_message(self, text: str) -> None:
        self.log(f"  {text}")

    def on_epoch_end(self, row: dict[str, Any], improved: bool) -> None:
        metric = next((k for k in ("val_top1", "val_map") if k in row), None)
        val = f", fake-quant val {metric[4:]} {row[metric]:.4f}" if metric else ""
        self.log(f"  QAT epoch {row['epoch']}/{self.epochs}: train loss {row.get('train_loss', float('nan')):.4f}"
                 f"{val}{' (best)' if improved else ''}")


def quantization_aware_finetune(model_path: str | os.PathLike, cfg, *, types: str, per_channel: bool,
                                calib: np.ndarray, log: Log = lambda m: None) -> QatRun:
    """Fine-tune the model at ``model_path`` (a PyTorch artifact) for ``cfg.qat_epochs`` epochs
    with ``types`` (s8s8 | u8s8) / ``per_channel`` INT8 simulated, observers calibrated on
    ``calib`` (the images ONNX Runtime will calibrate with), distilled from the input model unless
    ``cfg.distill`` is off; ``cfg`` is a :class:`~compress.quantize.config.QuantizeConfig` (lr,
    batch_size, max_steps_per_epoch, data, train_limit, seed, KD options)."""
    from ..data import load_data_for_model
    from ..distill.teacher import logits_cache_file
    from ..formats import open_model_file
    from ..prune.api import loop_config
    from ..prune.recovery import steps_per_epoch
    from ..training.balance import epoch_samples
    from ..training.criteria import build_criterion
    from ..training.loop import fit

    started = time.time()
    loaded = open_model_file(model_path)
    if loaded.model is None:
        raise UserError(f"{model_path}: quantization-aware training needs the PyTorch model (.safetensors "
                        f"artifact), not an ONNX graph")
    model, meta = loaded.model.eval(), loaded.meta
    torch.manual_seed(cfg.seed)
    bundle = load_data_for_model(meta, cfg.data, seed=cfg.data_seed, data_root=cfg.data_root,
                                 train_limit=cfg.train_limit, source=str(model_path),
                                 why="needed for quantization-aware fine-tuning")
    example = torch.as_tensor(np.asarray(calib[:2], dtype=np.float32))
    qat = prepare_qat(model, example, types=types, per_channel=per_channel)
    points = len(activation_quants(qat))
    layers = sum(parametrize.is_parametrized(m, "weight") for m in qat.modules())
    calibrate(qat, calib)
    train_cfg = loop_config(cfg, cfg.qat_epochs, meta.training_augmentation())
    per_epoch = steps_per_epoch(epoch_samples(bundle.train, cfg.balance), train_cfg)
    total = per_epoch * cfg.qat_epochs
    freeze_at = total - per_epoch if cfg.qat_epochs > 1 else max(1, per_epoch // 2)
    criterion = None
    if cfg.distill:
        teacher = copy.deepcopy(model).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        criterion = build_criterion(loop_config(cfg, 1), meta.task, teacher=teacher,
                                    loss=dataclasses.replace(cfg, kd_alpha=cfg.qat_kd_alpha).distill_loss(meta.task),
                                    cache_file=logits_cache_file(model_path, bundle.summary()))
    how = "distilled from the fp32 model" if criterion is not None else "labels only"
    log(f"quantization-aware fine-tuning: {cfg.qat_epochs} epoch(s) x {per_epoch} step(s), {how}, "
        f"{types.upper()} {'per-channel' if per_channel else 'per-tensor'} weights, {points} activation "
        f"tensors simulated; ranges frozen after step {freeze_at} ...")
    result = fit(qat, bundle, train_cfg, criterion=criterion, after_step=FreezeRanges(calib, freeze_at),
                 callback=_LogEpochs(log, cfg.qat_epochs))
    plain = strip_qat(qat)
    run = QatRun(model=plain, meta=meta, types=types, per_channel=per_channel, epochs=cfg.qat_epochs, steps=total,
                 distill=criterion is not None, criterion=result.criterion, activation_points=points,
                 weight_layers=layers, history=result.history, best_epoch=result.best_epoch,
                 best_val={k: v for k, v in result.best_metrics.items() if isinstance(v, (int, float))},
                 freeze_step=freeze_at, seconds=time.time() - started,
                 data={"spec": cfg.data or meta.training_data().get("spec"), "train": len(bundle.train),
                       "val": len(bundle.val), "train_limit": cfg.train_limit, "balance": cfg.balance})
    return run


# ----------------------------------------------------------------------------- in the INT8 stage

def plan(mode: str, outcome, *, min_agreement: float, has_model: bool) -> dict[str, Any]:
    """Whether quantization-aware training runs after the post-training search ``outcome``
    (a :class:`~compress.quantize.int8.SearchOutcome`): ``mode`` auto | on | off, ``has_model``
    whether the input is a PyTorch artifact. Returns the ``qat`` record's start: ``mode``,
    ``needed`` (no post-training candidate reached ``min_agreement``), ``ran``, ``why``,
    ``ptq_best_agreement``."""
    scored = [t.agreement for t in outcome.trials if t.agreement is not None]
    best = max(scored) if scored else None
    needed = outcome.chosen is None
    if not needed:
        why = f"PTQ reached {outcome.chosen.agreement:.2%} >= {min_agreement:.2%}"
    elif best is None:
        why = "no PTQ candidate could be built and scored"
    else:
        why = f"PTQ best agreement {best:.2%} < {min_agreement:.2%}"
    run = mode == "on" or (mode == "auto" and needed and has_model)
    if needed and not run:
        why += ("; --qat off" if mode == "off" else
                "; the input is an ONNX graph, and QAT needs the .safetensors artifact")
    elif run and not needed:
        why += "; fine-tuned anyway (--qat on)"
    return {"mode": mode, "needed": needed, "ran": run, "why": why, "ptq_best_agreement": best}


def target_structure(outcome, exclude=()):
    """The structure QAT fine-tunes for: the fastest one the search built (timed, not failed, no
    nodes excluded beyond ``exclude``), whose speed made it the search's first choice."""
    timed = [t for t in outcome.trials if t.status != "failed" and t.p50_ms is not None
             and set(t.candidate.exclude) <= set(exclude)]
    return min(timed, key=lambda t: t.p50_ms) if timed else None


class QatTrial(Trial):
    """A search trial whose graph was fine-tuned with quantization simulated first."""

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        return {**d, "label": f"QAT {d['label']}", "qat": True}


def qat_candidate(model_path, cfg, meta, target, data, reference: np.ndarray, *, input_name: str, threads: int,
                  work: Path, log: Log = lambda m: None):
    """Fine-tune for ``target``'s structure (a search :class:`~compress.quantize.int8.Trial`),
    export, and quantize with ONNX Runtime (same structure, MinMax ranges from ``data.calib``);
    score top-1 agreement on ``data.eval`` with ``reference`` (the fp32 input's decisions).
    Returns (the :class:`~compress.quantize.int8.Trial`, the :class:`QatRun`)."""
    from dataclasses import replace

    from ..export import export_onnx
    from ..runtime import OnnxRunner
    from . import int8

    run = quantization_aware_finetune(model_path, cfg, types=target.candidate.types,
                                      per_channel=target.candidate.per_channel, calib=data.calib, log=log)
    exported = work / "qat-fp32.onnx"
    export_onnx(run.model, meta, exported)
    pre = work / "qat-pre.onnx"
    int8.preprocess_graph(exported, pre)
    cand = replace(target.candidate, calibration="minmax", bias_corrected=False)
    trial = QatTrial(cand, path=work / "qat-int8.onnx")
    cache = work / "qat-ranges"  # never the search's cache: same tensor names, other weights
    cache.mkdir(exist_ok=True)
    log(f"quantizing the fine-tuned model: {cand.label()} ...")
    int8.quantize_candidate(pre, trial.path, cand, data, input_name, cache)
    got = int8.decisions(int8.predict(OnnxRunner(trial.path, threads), data.eval), data.task)
    trial.agreement = int8.agreement(got, reference)
    trial.p50_ms, trial.speedup = target.p50_ms, target.speedup  # same structure, same kernels
    trial.status = "passed" if trial.agreement >= cfg.min_agreement else "below threshold"
    trial.note = f"after {run.epochs} epoch(s) of quantization-aware fine-tuning; timing of its structure"
    log(f"QAT {cand.label()}: agreement {trial.agreement:.2%}")
    return trial, run


def structure_agreement(outcome, target) -> float | None:
    """The best post-training agreement of ``target``'s structure (any calibration, the same
    excluded nodes): what QAT started from."""
    scores = [t.agreement for t in outcome.trials if t.agreement is not None
              and t.candidate.structure() == target.candidate.structure()
              and t.candidate.exclude == target.candidate.exclude]
    return max(scores) if scores else None
