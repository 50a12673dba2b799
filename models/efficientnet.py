"""EfficientNet-B0..B3 (Tan & Le, 2019, "EfficientNet: Rethinking Model Scaling for CNNs").

The B0 baseline is the paper's Table 1: a 3x3 stem, seven stages of MBConv blocks (inverted
residuals with squeeze-and-excitation and SiLU/Swish), a 1x1 head conv to 4x the last stage's
width, global pooling, dropout and a Linear. B1..B3 scale it with the compound coefficients of
Section 3.3 (width, depth, resolution, dropout per variant).

Module names follow torchvision's layout (``features.N.M.block.K``, ``classifier.1``) so
``torchvision.models.efficientnet_b0().state_dict()`` (b0..b3) loads unchanged. Like torchvision's
B0..B3, BatchNorm keeps PyTorch's defaults (eps=1e-5, momentum=0.1); torchvision only switches
to eps=1e-3 / momentum=0.01 from B5 on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ._layers import ConvBNAct, DropPath, SequentialFeaturesModel, SqueezeExcite, default_cfg, init_weights, \
    input_strides, make_divisible
from ._registry import register_model


@dataclass(frozen=True)
class MBConvRow:
    """One stage of the paper's Table 1 (B0): expansion ratio, kernel size, first stride,
    input channels, output channels, number of layers."""
    expand_ratio: int
    kernel: int
    stride: int
    in_ch: int
    out_ch: int
    layers: int


PAPER_TABLE = (
    MBConvRow(1, 3, 1, 32, 16, 1),   # stage 2: MBConv1, k3x3, 112x112
    MBConvRow(6, 3, 2, 16, 24, 2),   # stage 3: MBConv6, k3x3, 112x112 -> 56
    MBConvRow(6, 5, 2, 24, 40, 2),   # stage 4: MBConv6, k5x5, 56 -> 28
    MBConvRow(6, 3, 2, 40, 80, 3),   # stage 5: MBConv6, k3x3, 28 -> 14
    MBConvRow(6, 5, 1, 80, 112, 3),  # stage 6: MBConv6, k5x5, 14
    MBConvRow(6, 5, 2, 112, 192, 4),  # stage 7: MBConv6, k5x5, 14 -> 7
    MBConvRow(6, 3, 1, 192, 320, 1),  # stage 8: MBConv6, k3x3, 7
)
STEM_CHANNELS = 32
HEAD_EXPANSION = 4  # head conv width = 4 x last stage width (1280 for B0)
SE_RATIO = 0.25  # squeeze width = 1/4 of the block's *input* channels


@dataclass(frozen=True)
class CompoundScaling:
    """Per-variant coefficients: channel multiplier, layer multiplier, input side (px), dropout."""
    width: float
    depth: float
    resolution: int
    dropout: float


VARIANTS = {
    "b0": CompoundScaling(1.0, 1.0, 224, 0.2),
    "b1": CompoundScaling(1.0, 1.1, 240, 0.2),
    "b2": CompoundScaling(1.1, 1.2, 260, 0.3),
    "b3": CompoundScaling(1.2, 1.4, 300, 0.3),
}


def scale_channels(channels: int, width_mult: float) -> int:
    return make_divisible(channels * width_mult, 8)


def scale_depth(layers: int, depth_mult: float) -> int:
    return int(math.ceil(layers * depth_mult))


class MBConv(nn.Module):
    """Mobile inverted bottleneck: [1x1 expand] → kxk depthwise → SE → 1x1 linear projection,
    with an identity skip (and stochastic depth on the branch) when stride is 1 and widths match."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand_ratio: int, act: str,
                 drop_path: float = 0.0):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.use_res_connect = stride == 1 and in_ch == out_ch
        hidden = scale_channels(in_ch, expand_ratio)
        layers: list[nn.Module] = []
        if hidden != in_ch:
            layers.append(ConvBNAct(in_ch, hidden, 1, act=act))
        layers += [
            ConvBNAct(hidden, hidden, kernel, stride, groups=hidden, act=act),
            SqueezeExcite(hidden, max(1, int(in_ch * SE_RATIO)), act=act),
            ConvBNAct(hidden, out_ch, 1, act=None),
        ]
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = DropPath(drop_path) if self.use_res_connect and drop_path > 0 else nn.Identity()
        self.out_channels = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.stochastic_depth(self.block(x))
        return self.block(x)


class EfficientNet(SequentialFeaturesModel):
    """EfficientNet with compound scaling ``width_mult`` (channels) and ``depth_mult`` (layers).

    ``drop_path_rate`` is the stochastic-depth probability reached by the last block; block ``i``
    of ``L`` drops its branch with probability ``drop_path_rate * i / L`` (torchvision's schedule).
    ``small_input=True`` keeps the stem and the first stride-2 stage at stride 1, so a 32x32
    image ends as a 4x4 map instead of 1x1.
    """

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, depth_mult: float = 1.0,
                 act_layer: str = "silu", small_input: bool | str = False, drop_rate: float = 0.2,
                 drop_path_rate: float = 0.2, in_chans: int = 3, resolution: int = 224):
        super().__init__()
        if width_mult <= 0 or depth_mult <= 0:
            raise ValueError(f"width_mult and depth_mult must be > 0, got {width_mult} and {depth_mult}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.num_classes = num_classes
        stem_ch = scale_channels(STEM_CHANNELS, width_mult)
        stem_stride, first_stride = input_strides(small_input)
        features: list[nn.Module] = [ConvBNAct(in_chans, stem_ch, 3, stem_stride, act=act_layer)]

        repeats = [scale_depth(row.layers, depth_mult) for row in PAPER_TABLE]
        total_blocks = sum(repeats)
        block_idx = 0
        in_ch = stem_ch
        first_downsampling_stage = next(i for i, row in enumerate(PAPER_TABLE) if row.stride == 2)
        for stage_idx, (row, n) in enumerate(zip(PAPER_TABLE, repeats)):
            out_ch = scale_channels(row.out_ch, width_mult)
            stride = first_stride if stage_idx == first_downsampling_stage else row.stride
            stage: list[nn.Module] = []
            for i in range(n):
                dp = drop_path_rate * block_idx / total_blocks
                stage.append(MBConv(in_ch, out_ch, row.kernel, stride if i == 0 else 1, row.expand_ratio,
                                    act_layer, dp))
                in_ch = out_ch
                block_idx += 1
            features.append(nn.Sequential(*stage))

        head_ch = HEAD_EXPANSION * in_ch
        features.append(ConvBNAct(in_ch, head_ch, 1, act=act_layer))
        self.features = nn.Sequential(*features)
        self.num_features = head_ch
        self.classifier = nn.Sequential(nn.Dropout(p=drop_rate), nn.Linear(head_ch, num_classes))
        self.default_cfg = default_cfg(32 if small_input else resolution, interpolation="bicubic")
        init_weights(self)


def _efficientnet(variant: str, num_classes: int, width_mult: float | None = None,
                  drop_rate: float | None = None, **kwargs) -> EfficientNet:
    scaling = VARIANTS[variant]
    return EfficientNet(
        num_classes=num_classes,
        width_mult=scaling.width if width_mult is None else width_mult,
        depth_mult=scaling.depth,
        drop_rate=scaling.dropout if drop_rate is None else drop_rate,
        resolution=scaling.resolution,
        **kwargs,
    )


@register_model(reference="torchvision efficientnet_b0: 5,288,548 params, 0.39B FLOPs (paper Table 2)",
                torchvision_name="efficientnet_b0")
def efficientnet_b0(*, num_classes: int = 1000, **kwargs) -> EfficientNet:
    """EfficientNet-B0 (224 px, dropout 0.2). ``width_mult`` overrides the compound width."""
    return _efficientnet("b0", num_classes, **kwargs)


@register_model(reference="torchvision efficientnet_b1: 7,794,184 params, 0.70B FLOPs (paper Table 2)",
                torchvision_name="efficientnet_b1")
def efficientnet_b1(*, num_classes: int = 1000, **kwargs) -> EfficientNet:
    """EfficientNet-B1: depth x1.1, 240 px, dropout 0.2."""
    return _efficientnet("b1", num_classes, **kwargs)


@register_model(reference="torchvision efficientnet_b2: 9,109,994 params, 1.0B FLOPs (paper Table 2)",
                torchvision_name="efficientnet_b2")
def efficientnet_b2(*, num_classes: int = 1000, **kwargs) -> EfficientNet:
    """EfficientNet-B2: width x1.1, depth x1.2, 260 px, dropout 0.3."""
    return _efficientnet("b2", num_classes, **kwargs)


@register_model(reference="torchvision efficientnet_b3: 12,233,232 params, 1.8B FLOPs (paper Table 2)",
                torchvision_name="efficientnet_b3")
def efficientnet_b3(*, num_classes: int = 1000, **kwargs) -> EfficientNet:
    """EfficientNet-B3: width x1.2, depth x1.4, 300 px, dropout 0.3."""
    return _efficientnet("b3", num_classes, **kwargs)
