"""MobileNetV1 (Howard et al., 2017, "MobileNets: Efficient Convolutional Neural Networks for Mobile
Vision Applications", Table 1 body, Table 6 width multiplier).

A 3x3 stem convolution followed by thirteen depthwise-separable layers (3x3 depthwise conv → BN →
ReLU → 1x1 pointwise conv → BN → ReLU), global average pooling and one fully connected layer.
The network has no residual connections.

torchvision has no MobileNetV1, so there is no state_dict layout to follow; module names mirror
the rest of the zoo (``features.N.dw`` / ``features.N.pw``, ``classifier.1``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ._layers import (ConvBNAct, SequentialFeaturesModel, check_unused_drop_path, default_cfg, init_weights,
                      input_strides, make_divisible)
from ._registry import register_model


@dataclass(frozen=True)
class SeparableRow:
    """One depthwise-separable layer of the paper's Table 1: depthwise stride s, pointwise output channels c."""
    s: int
    c: int


STEM_CHANNELS = 32
PAPER_TABLE = (
    SeparableRow(1, 64),
    SeparableRow(2, 128),
    SeparableRow(1, 128),
    SeparableRow(2, 256),
    SeparableRow(1, 256),
    SeparableRow(2, 512),
    *(SeparableRow(1, 512),) * 5,
    SeparableRow(2, 1024),
    # Table 1 prints "Conv dw / s2" here, but its own input and output sizes are both 7x7: the
    # stride is 1, as in the reference TF-slim implementation and the paper's 569M MACs.
    SeparableRow(1, 1024),
)


class DepthwiseSeparable(nn.Sequential):
    """3x3 depthwise conv-BN-act (spatial filtering) → 1x1 pointwise conv-BN-act (channel mixing)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, act: str):
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        super().__init__()
        self.dw = ConvBNAct(in_ch, in_ch, 3, stride, groups=in_ch, act=act)
        self.pw = ConvBNAct(in_ch, out_ch, 1, act=act)
        self.out_channels = out_ch


class MobileNetV1(SequentialFeaturesModel):
    """MobileNetV1 with the paper's width multiplier ``width_mult`` (alpha in the paper).

    ``small_input=True`` gives the stem and the first stride-2 layer stride 1 (total stride 8
    instead of 32), so a 32x32 image ends as a 4x4 feature map. ``drop_path_rate`` is accepted for
    a uniform zoo interface but has nothing to act on: the network has no residual blocks.
    """

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, act_layer: str = "relu",
                 small_input: bool | str = False, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 in_chans: int = 3, round_nearest: int = 8):
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        check_unused_drop_path(drop_path_rate, "MobileNetV1")
        self.num_classes = num_classes
        in_ch = make_divisible(STEM_CHANNELS * width_mult, round_nearest)
        stem_stride, first_stride = input_strides(small_input)
        features: list[nn.Module] = [ConvBNAct(in_chans, in_ch, 3, stem_stride, act=act_layer)]
        first_downsample = next(i for i, row in enumerate(PAPER_TABLE) if row.s == 2)
        for i, row in enumerate(PAPER_TABLE):
            stride = first_stride if i == first_downsample else row.s
            out_ch = make_divisible(row.c * width_mult, round_nearest)
            features.append(DepthwiseSeparable(in_ch, out_ch, stride, act_layer))
            in_ch = out_ch
        self.features = nn.Sequential(*features)
        self.num_features = in_ch
        self.classifier = nn.Sequential(nn.Dropout(p=drop_rate), nn.Linear(in_ch, num_classes))
        self.default_cfg = default_cfg(32 if small_input else 224)
        init_weights(self)


@register_model(reference="imgclsmob MobileNet x1.0: 4,231,976 params; paper Table 6: 4.2M params, 569M MACs")
def mobilenet_v1(*, num_classes: int = 1000, **kwargs) -> MobileNetV1:
    """MobileNetV1; ``width_mult`` 1.0 / 0.75 / 0.5 / 0.25 gives the paper's Table 6 rows
    (4.2M / 2.6M / 1.3M / 0.5M params, 569M / 325M / 149M / 41M MACs at 224x224)."""
    return MobileNetV1(num_classes=num_classes, **kwargs)
