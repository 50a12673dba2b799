"""Every option of the quantize stage, in one place (torch-free).

Modes (:meth:`QuantizeConfig.mode`):

* ``int8``: ONNX Runtime static INT8 of an ONNX graph (a ``.safetensors`` input is exported
  first). By default a *search*: every structural candidate (QDQ/QOperator x S8S8/U8S8 x
  per-channel or per-tensor) is timed on this CPU, then the fastest are scored with each
  calibration method by top-1 agreement with the fp32 model on held-out images; the fastest
  candidate at or above ``--min-agreement`` wins. Options given explicitly pin their axis. When
  none does and the input is a ``.safetensors`` artifact, quantization-aware training
  (``--qat auto``, default) fine-tunes it with INT8 simulated and quantizes the result.
* ``dynamic``: ONNX Runtime dynamic INT8 (weights INT8, activations quantized at run time).
* ``kmeans``: Deep Compression's trained quantization of a ``.safetensors`` artifact: per-layer
  k-means weight sharing with ``2^bits`` centroids and fine-tuning of the shared centroids.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import option
from ..distill.config import KDOptions
from ..errors import UserError

FORMATS = ("qdq", "qoperator")
TYPES = ("s8s8", "u8s8")  # activations, weights
CALIBRATIONS = ("minmax", "entropy", "percentile")
PER_CHANNEL = ("on", "off")
BIAS_CORRECTION = ("off", "on")
KMEANS_INITS = ("linear", "density", "random")
MODES = ("int8", "dynamic", "kmeans")

_I, _S, _T, _K = "INT8 calibration and scoring", "INT8 search space", "INT8 timing", "k-means weight sharing"
_F, _D = "fine-tuning (k-means, QAT)", "data (every mode)"
_Q = "quantization-aware training"
QAT_MODES = ("auto", "on", "off")
_at_least_1 = (lambda v: v >= 1, "must be >= 1")
_at_least_0 = (lambda v: v >= 0, "must be >= 0")
_bits = (lambda v: 1 <= v <= 8, "must be between 1 and 8")


def _auto_or(choices: tuple[str, ...]) -> tuple[str, ...]:
    return ("auto", *choices)


@dataclass(kw_only=True)
class QuantizeConfig(KDOptions):
    """Options of ``compress quantize`` (the input model and the output path are arguments)."""

    int8: bool = option(False, help="static INT8 with ONNX Runtime, chosen by measurement (input .onnx or "
                                    ".safetensors, output .onnx)")
    dynamic: bool = option(False, help="dynamic INT8 with ONNX Runtime: no calibration; suits Gemm/MatMul-heavy "
                                       "graphs more than convolutions")
    kmeans_bits: int | None = option(None, check=_bits, metavar="BITS",
                                     help="k-means weight sharing with 2^BITS shared values per layer (input and "
                                          "output .safetensors)")
    # --- INT8: data
    calib: str | None = option(None, group=_I, metavar="DATA",
                               help="data spec whose training images calibrate and whose validation images score "
                                    "agreement (default: the data set the model was trained on)")
    data_root: str | None = option(None, group=_D, help="folder of the data set files (fashion-mnist, cifar10, ...)")
    data_seed: int | None = option(None, group=_D, help="split seed (default: the training run's, else 0)")
    calib_samples: int = option(256, check=_at_least_1, group=_I,
                                help="training images fed through the model to calibrate activation ranges")
    eval_samples: int = option(6000, check=_at_least_1, group=_I,
                               help="held-out validation images on which each candidate's top-1 agreement with "
                                    "the fp32 model is measured (at most the validation split; Fashion-MNIST's has "
                                    "6,000: on 2,000 the ranking of calibrations was noise, a few images apart, "
                                    "and disagreed with the 10,000 test images)")
    min_agreement: float = option(0.99, check=(lambda v: 0 < v <= 1, "must be in (0, 1]"), group=_I,
                                  help="lowest top-1 agreement with the fp32 model a candidate may have")
    test: bool = option(True, group=_D, help="report the test-split accuracy of the input and the quantized model")
    # --- INT8: search space (auto = search that axis)
    quant_format: str = option("auto", choices=_auto_or(FORMATS), parse=str.lower, flag="--format", group=_S,
                               help="qdq: QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses into "
                                    "INT8 kernels; qoperator: QLinearConv & co.")
    types: str = option("auto", choices=_auto_or(TYPES), parse=str.lower, group=_S,
                        help="activation and weight types: s8s8 (ONNX Runtime's recommended first try) or u8s8")
    per_channel: str = option("auto", choices=_auto_or(PER_CHANNEL), parse=str.lower, group=_S,
                              help="one weight scale per output channel (on) or per tensor (off)")
    calibration: str = option("auto", choices=_auto_or(CALIBRATIONS), parse=str.lower, group=_S,
                              help="activation range estimate: minmax, entropy (KL) or percentile (99.999%%)")
    bias_correction: str = option("auto", choices=_auto_or(BIAS_CORRECTION), parse=str.lower, group=_S,
                                  help="subtract from each convolution's bias the mean output shift its INT8 weights "
                                       "cause (measured on the calibration images): on, off, or auto = score both "
                                       "with each calibration (on the Fashion-MNIST MobileNetV2, per-tensor: test "
                                       "agreement with fp32 98.78%% -> 99.24%%)")
    exclude: list[str] = option(default_factory=list, repeat=True, metavar="NODE", group=_S,
                                help="ONNX node names kept in float")
    mixed: bool = option(True, group=_S,
                         help="time the chosen candidate again beside copies that keep its highest-resolution "
                              "convolutions (then the two highest resolutions) in float, and keep a copy that is "
                              "3%% faster and still agrees enough (the 112x112 layers of a pruned MobileNetV2 at "
                              "224x224 ran faster in float under per-channel QDQ, slower under per-tensor: it "
                              "depends, so it is timed)")
    max_exclude: int = option(8, check=_at_least_0, group=_S,
                              help="when no candidate reaches --min-agreement: keep up to this many of the "
                                   "nodes with the largest quantization error in float, then search again")
    # --- INT8: timing
    threads: int | None = option(None, check=_at_least_1, group=_T,
                                 help="ONNX Runtime intra-op threads when timing (default: the usable cores)")
    batch: int = option(1, check=_at_least_1, group=_T, help="batch size when timing")
    input_size: int | None = option(None, check=(lambda v: 8 <= v <= 4096, "must be between 8 and 4096"),
                                    group=_T, help="square side to time at (default: the model's input size)")
    budget: float = option(1.0, check=(lambda v: v > 0, "must be > 0 seconds"), group=_T,
                           help="timing seconds per candidate (all timed interleaved with the fp32 model)")
    # --- INT8: quantization-aware training
    qat: str = option("auto", choices=QAT_MODES, parse=str.lower, group=_Q,
                      help="fine-tune with INT8 simulated (fake quantization, distilled from the fp32 model "
                           "unless --no-distill; --lr, --batch-size, --data, ... of the fine-tuning group) and "
                           "quantize the result: auto = only when no post-training candidate reaches "
                           "--min-agreement and the input is a .safetensors artifact; on = always; off = never")
    qat_epochs: int = option(2, check=_at_least_1, group=_Q, help="epochs of quantization-aware fine-tuning")
    qat_kd_alpha: float = option(1.0, check=(lambda v: 0 <= v <= 1, "must be in [0, 1]"), group=_Q,
                                 help="kd loss: weight of the fp32 teacher's soft targets in quantization-aware "
                                      "fine-tuning, 1 - alpha on the labels (1 = match the fp32 model alone: "
                                      "the aim is agreement with it; --kd-alpha is the other stages' weight)")
    # --- k-means
    conv_bits: int | None = option(None, check=_bits, group=_K,
                                   help="bits of convolution layers (default --kmeans-bits)")
    fc_bits: int | None = option(None, check=_bits, group=_K,
                                 help="bits of fully connected layers (default --kmeans-bits)")
    kmeans_init: str = option("linear", choices=KMEANS_INITS, parse=str.lower, group=_K,
                              help="centroid initialisation: linear over [min, max] (Deep Compression's best), "
                                   "density (CDF quantiles) or random (seeded)")
    min_weights: int = option(0, check=_at_least_0, group=_K,
                              help="leave layers with fewer weights than this unshared (0 = share every "
                                   "conv/linear layer)")
    fold_bn: bool | None = option(None, group=_K,
                                  help="cluster each convolution's weights as folded with the BatchNorm after it "
                                       "(one codebook on the scale of the layer's output; fine-tuning keeps the BN "
                                       "live; the saved BN becomes a per-channel factor + bias) or, --no-fold-bn, "
                                       "the raw weights. Default: fold only a model with pruned weights (>= 5%% "
                                       "zeros), where raw clustering fails on channels differing 100x in scale; on the "
                                       "dense Fashion-MNIST MobileNetV2 raw weights kept +0.16 points, folded "
                                       "-1.91 (README, Quantization)")
    freeze_bn: bool = option(False, group=_K,
                             help="fold the BatchNorms into the convolutions before clustering (implies "
                                  "--fold-bn) "
                                  "and keep them frozen (identity + bias) while the centroids fine-tune, instead "
                                  "of training with live BatchNorm (measured: better on an 85%%-sparse "
                                  "MobileNetV2, 91.54%% vs 90.83%%; less stable at the default --lr on a "
                                  "structured-pruned one; README, Huffman)")
    # --- k-means fine-tuning
    finetune: int = option(2, check=_at_least_0, metavar="EPOCHS", group=_F,
                           help="epochs of centroid fine-tuning (gradients summed per cluster; 0 = none)")
    distill: bool = option(True, group=_F, help="fine-tune with distillation from the unquantized model "
                                                "(--no-distill for the labels alone)")
    lr: float = option(0.001, check=(lambda v: v > 0, "must be > 0"), group=_F, help="fine-tuning learning rate")
    batch_size: int = option(64, check=_at_least_1, group=_F, help="fine-tuning batch size")
    max_steps_per_epoch: int = option(0, check=_at_least_0, group=_F,
                                      help="cap optimizer steps per epoch (0 = all)")
    data: str | None = option(None, group=_F, help="data spec (default: the one the model was trained on)")
    train_limit: int | None = option(None, check=_at_least_1, group=_F,
                                     help="use this many training samples (quick runs)")
    seed: int = option(0, group=_F, help="seed of fine-tuning, k-means and sampling")

    def mode(self) -> str:
        """int8 | dynamic | kmeans (after :meth:`check`)."""
        if self.kmeans_bits is not None:
            return "kmeans"
        return "dynamic" if self.dynamic else "int8"

    def check(self) -> None:
        chosen = [n for n, on in (("--int8", self.int8), ("--dynamic", self.dynamic),
                                  ("--kmeans-bits", self.kmeans_bits is not None)) if on]
        if not chosen:
            raise UserError("nothing to do: give --int8 (static INT8, searched), --dynamic or --kmeans-bits N")
        if len(chosen) > 1:
            raise UserError(f"give one of {', '.join(chosen)}")
        if self.kmeans_bits is None and (self.conv_bits or self.fc_bits):
            raise UserError("--conv-bits and --fc-bits refine --kmeans-bits; give --kmeans-bits too")

    def layer_bits(self, kind: str) -> int:
        """Bits of a layer of ``kind`` ("conv" | "fc") in k-means mode."""
        assert self.kmeans_bits is not None
        return int({"conv": self.conv_bits, "fc": self.fc_bits}[kind] or self.kmeans_bits)

    def pinned(self) -> dict[str, str]:
        """The INT8 axes fixed by an option (the others are searched)."""
        return {k: v for k, v in (("format", self.quant_format), ("types", self.types),
                                  ("per_channel", self.per_channel), ("calibration", self.calibration),
                                  ("bias_correction", self.bias_correction))
                if v != "auto"}
