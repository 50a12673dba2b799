"""PP-LCNet (Cui et al., 2021, "PP-LCNet: A Lightweight CPU Convolutional Neural Network", Table 1).

A MobileNetV1-like stack of depthwise-separable blocks tuned for CPU latency: hard-swish
everywhere, 5x5 depthwise kernels in the last seven blocks, squeeze-excite only in the last two,
and after global average pooling a 1x1 conv to 1280 channels (hard-swish, dropout) before the
fully connected layer. Channel counts and the SE width (channels // 4, no rounding) follow the
official PaddleClas implementation (``ppcls/arch/backbone/legendary_models/pp_lcnet.py``), so the
parameter counts are the official ones.

torchvision has no PP-LCNet, so there is no state_dict layout to follow; module names mirror the
rest of the zoo (``features.N.dw`` / ``.se`` / ``.pw``, ``head.0`` for the 1280-d conv, ``classifier``).
The network has no residual connections.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._layers import (ClassifierModel, ConvBNAct, SqueezeExcite, check_unused_drop_path, default_cfg, get_act,
                      init_weights, input_strides, make_divisible)
from ._registry import register_model


@dataclass(frozen=True)
class SeparableRow:
    """One depthwise-separable block: kernel k, output channels c (at scale 1.0), stride s, squeeze-excite se."""
    k: int
    c: int
    s: int
    se: bool


STEM_CHANNELS = 16
HEAD_CHANNELS = 1280  # the "larger dimensional 1x1 conv after GAP" (Sec. 3.4); not scaled with the width
SE_REDUCTION = 4
# Stages 2..6 of the paper's Table 1 (stage 1 is the stem conv).
PAPER_TABLE = (
    SeparableRow(3, 32, 1, False),                                   # stage 2
    SeparableRow(3, 64, 2, False), SeparableRow(3, 64, 1, False),    # stage 3
    SeparableRow(3, 128, 2, False), SeparableRow(3, 128, 1, False),  # stage 4
    SeparableRow(3, 256, 2, False), *(SeparableRow(5, 256, 1, False),) * 5,  # stage 5
    SeparableRow(5, 512, 2, True), SeparableRow(5, 512, 1, True),    # stage 6
)


class DepthwiseSeparable(nn.Module):
    """kxk depthwise conv-BN-act → optional SE (ReLU, hard-sigmoid gate) → 1x1 pointwise conv-BN-act."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int, use_se: bool, act: str):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.dw = ConvBNAct(in_ch, in_ch, kernel_size, stride, groups=in_ch, act=act)
        self.se = (SqueezeExcite(in_ch, in_ch // SE_REDUCTION, act="relu", gate="hardsigmoid")
                   if use_se else nn.Identity())
        self.pw = ConvBNAct(in_ch, out_ch, 1, act=act)
        self.out_channels = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.se(self.dw(x)))


class PPLCNet(ClassifierModel):
    """PP-LCNet at width ``scale`` (0.25 .. 2.5 in the paper).

    ``act_layer`` replaces hard-swish in every conv and in the head (the SE modules keep ReLU and
    the hard-sigmoid gate). ``small_input=True`` gives the stem and the first stride-2 block stride
    1 (total stride 8), so a 32x32 image ends as a 4x4 feature map. ``drop_rate`` is the dropout
    after the 1280-d head conv. ``drop_path_rate`` is accepted for a uniform zoo interface but has
    nothing to act on: the network has no residual blocks.
    """

    def __init__(self, scale: float = 1.0, num_classes: int = 1000, act_layer: str = "hardswish",
                 small_input: bool | str = False, drop_rate: float = 0.2, drop_path_rate: float = 0.0,
                 in_chans: int = 3, round_nearest: int = 8):
        super().__init__()
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        check_unused_drop_path(drop_path_rate, "PP-LCNet")
        self.num_classes = num_classes
        in_ch = make_divisible(STEM_CHANNELS * scale, round_nearest)
        stem_stride, first_stride = input_strides(small_input)
        features: list[nn.Module] = [ConvBNAct(in_chans, in_ch, 3, stem_stride, act=act_layer)]
        first_downsample = next(i for i, row in enumerate(PAPER_TABLE) if row.s == 2)
        for i, row in enumerate(PAPER_TABLE):
            stride = first_stride if i == first_downsample else row.s
            out_ch = make_divisible(row.c * scale, round_nearest)
            features.append(DepthwiseSeparable(in_ch, out_ch, row.k, stride, row.se, act_layer))
            in_ch = out_ch
        self.features = nn.Sequential(*features)
        # Applied to the pooled (N, C, 1, 1) map: a 1x1 conv without bias, as in PaddleClas.
        self.head = nn.Sequential(nn.Conv2d(in_ch, HEAD_CHANNELS, 1, bias=False), get_act(act_layer),
                                  nn.Dropout(p=drop_rate))
        self.num_features = HEAD_CHANNELS
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)
        self.default_cfg = default_cfg(32 if small_input else 224)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head(F.adaptive_avg_pool2d(x, 1)).flatten(1)
        return x if pre_logits else self.classifier(x)

    def get_classifier(self) -> nn.Linear:
        return self.classifier

    def _set_classifier(self, layer: nn.Module) -> None:
        self.classifier = layer


@register_model(reference="PaddleClas PP-LCNet docs: PPLCNet_x0_25 1.5M params, 18M FLOPs")
def pplcnet_x0_25(*, num_classes: int = 1000, **kwargs) -> PPLCNet:
    """PP-LCNet x0.25 (paper: 1.5M params, 18M FLOPs, 51.9% ImageNet top-1)."""
    return PPLCNet(0.25, num_classes=num_classes, **kwargs)


@register_model(reference="PaddleClas PP-LCNet docs: PPLCNet_x0_35 1.6M params, 29M FLOPs")
def pplcnet_x0_35(*, num_classes: int = 1000, **kwargs) -> PPLCNet:
    """PP-LCNet x0.35 (paper: 1.6M params, 29M FLOPs, 58.1% top-1)."""
    return PPLCNet(0.35, num_classes=num_classes, **kwargs)


@register_model(reference="keras_cv_attention_models LCNet050 (official weights): 1.88M params; paper 1.9M, 47M FLOPs")
def pplcnet_x0_5(*, num_classes: int = 1000, **kwargs) -> PPLCNet:
    """PP-LCNet x0.5 (paper: 1.9M params, 47M FLOPs, 63.1% top-1)."""
    return PPLCNet(0.5, num_classes=num_classes, **kwargs)


@register_model(reference="keras_cv_attention_models LCNet075 (official weights): 2.36M params; paper 2.4M, 99M FLOPs")
def pplcnet_x0_75(*, num_classes: int = 1000, **kwargs) -> PPLCNet:
    """PP-LCNet x0.75 (paper: 2.4M params, 99M FLOPs, 68.2% top-1)."""
    return PPLCNet(0.75, num_classes=num_classes, **kwargs)


@register_model(reference="keras_cv_attention_models LCNet100 (official weights): 2.95M params; paper 3.0M, 161M FLOPs")
def pplcnet_x1_0(*, num_classes: int = 1000, **kwargs) -> PPLCNet:
    """PP-LCNet x1.0 (paper: 3.0M params, 161M FLOPs, 71.3% top-1)."""
    return PPLCNet(1.0, num_classes=num_classes, **kwargs)


@register_model(reference="keras_cv_attention_models LCNet150 (official weights): 4.52M params; paper 4.5M, 342M FLOPs")
def pplcnet_x1_5(*, num_classes: int = 1000, **kwargs) -> PPLCNet:
    """PP-LCNet x1.5 (paper: 4.5M params, 342M FLOPs, 73.7% top-1)."""
    return PPLCNet(1.5, num_classes=num_classes, **kwargs)


@register_model(reference="keras_cv_attention_models LCNet200 (official weights): 6.54M params; paper 6.5M, 590M FLOPs")
def pplcnet_x2_0(*, num_classes: int = 1000, **kwargs) -> PPLCNet:
    """PP-LCNet x2.0 (paper: 6.5M params, 590M FLOPs, 75.2% top-1)."""
    return PPLCNet(2.0, num_classes=num_classes, **kwargs)


@register_model(reference="keras_cv_attention_models LCNet250 (official weights): 9.04M params; paper 9.0M, 906M FLOPs")
def pplcnet_x2_5(*, num_classes: int = 1000, **kwargs) -> PPLCNet:
    """PP-LCNet x2.5 (paper: 9.0M params, 906M FLOPs, 76.6% top-1)."""
    return PPLCNet(2.5, num_classes=num_classes, **kwargs)
