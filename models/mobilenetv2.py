"""MobileNetV2 (Sandler et al., 2018, "Inverted Residuals and Linear Bottlenecks", Table 2).

Module names follow torchvision's layout (``features.N.conv...``, ``classifier.1``) so its
state_dict loads unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ._layers import ConvBNAct, DropPath, SequentialFeaturesModel, default_cfg, init_weights, input_strides, make_divisible
from ._registry import register_model


@dataclass(frozen=True)
class BottleneckRow:
    """One row of the paper's Table 2: expansion t, output channels c, repeats n, first stride s."""
    t: int
    c: int
    n: int
    s: int


PAPER_TABLE = (
    BottleneckRow(1, 16, 1, 1),
    BottleneckRow(6, 24, 2, 2),
    BottleneckRow(6, 32, 3, 2),
    BottleneckRow(6, 64, 4, 2),
    BottleneckRow(6, 96, 3, 1),
    BottleneckRow(6, 160, 3, 2),
    BottleneckRow(6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """1x1 expand → 3x3 depthwise → 1x1 linear projection, with a skip when shapes allow."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int, act: str, drop_path: float = 0.0):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = int(round(in_ch * expand_ratio))
        self.use_res_connect = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_ch, hidden, 1, act=act))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride, groups=hidden, act=act),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)
        self.drop_path = DropPath(drop_path) if self.use_res_connect and drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.drop_path(self.conv(x))
        return self.conv(x)


class MobileNetV2(SequentialFeaturesModel):
    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, act_layer: str = "relu6",
                 small_input: bool | str = False, drop_rate: float = 0.2, drop_path_rate: float = 0.0,
                 in_chans: int = 3, round_nearest: int = 8):
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        self.num_classes = num_classes
        in_ch = make_divisible(32 * width_mult, round_nearest)
        last_ch = make_divisible(1280 * max(1.0, width_mult), round_nearest)
        # Small inputs (e.g. 32x32): the stem and the first stride-2 stage keep full resolution,
        # so a 32x32 image ends as a 4x4 map instead of 1x1.
        stem_stride, first_stride = input_strides(small_input)
        features: list[nn.Module] = [ConvBNAct(in_chans, in_ch, 3, stem_stride, act=act_layer)]
        total_blocks = sum(r.n for r in PAPER_TABLE)
        block_idx = 0
        for row_idx, row in enumerate(PAPER_TABLE):
            out_ch = make_divisible(row.c * width_mult, round_nearest)
            for i in range(row.n):
                stride = row.s if i == 0 else 1
                if row_idx == 1 and i == 0:
                    stride = first_stride
                dp = drop_path_rate * block_idx / max(1, total_blocks - 1)
                features.append(InvertedResidual(in_ch, out_ch, stride, row.t, act_layer, dp))
                in_ch = out_ch
                block_idx += 1
        features.append(ConvBNAct(in_ch, last_ch, 1, act=act_layer))
        self.features = nn.Sequential(*features)
        self.num_features = last_ch
        self.classifier = nn.Sequential(nn.Dropout(p=drop_rate), nn.Linear(last_ch, num_classes))
        self.default_cfg = default_cfg(32 if small_input else 224)
        init_weights(self)


@register_model(reference="torchvision mobilenet_v2: 3,504,872 params, 300M MACs (paper Table 3)",
                torchvision_name="mobilenet_v2")
def mobilenet_v2(*, num_classes: int = 1000, **kwargs) -> MobileNetV2:
    """MobileNetV2; ``width_mult`` (0.35..1.4) scales every layer as in the paper."""
    return MobileNetV2(num_classes=num_classes, **kwargs)
