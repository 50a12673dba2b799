"""MobileNetV3 Small and Large (Howard et al., 2019, "Searching for MobileNetV3", Tables 1 and 2).

Inverted residual blocks (1x1 expand → kxk depthwise → optional squeeze-excite → 1x1 linear
projection) with ReLU in the early layers and hard-swish later, a 1x1 conv to 6x the last block
width, global pooling, then a two-layer classifier (Linear → hard-swish → dropout → Linear; the
paper's "conv2d 1x1, NBN" layers, which act on a 1x1 map).

Module names and hyper-parameters follow torchvision's ``mobilenet_v3_small``/``_large``
(``features.N.block.M``, SE ``fc1``/``fc2``, ``classifier.0``/``classifier.3``, BatchNorm eps 1e-3,
momentum 0.01), so torchvision's state_dict loads with ``strict=True`` and gives the same outputs.
Like torchvision, the Small model's last 1x1 conv has no squeeze-excite (Table 2 lists one there).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ._layers import (ClassifierModel, ConvBNAct, DropPath, SqueezeExcite, default_cfg, get_act, global_pool,
                      init_weights, input_strides, make_divisible)
from ._registry import register_model

# TensorFlow's BatchNorm defaults, used by the paper's models and by torchvision's port.
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


@dataclass(frozen=True)
class BneckRow:
    """One ``bneck`` row of Tables 1/2: kernel k, expansion size exp, output channels out,
    squeeze-excite se, nonlinearity nl ("RE" = ReLU, "HS" = hard-swish), stride s."""
    k: int
    exp: int
    out: int
    se: bool
    nl: str
    s: int


LARGE_TABLE = (
    BneckRow(3, 16, 16, False, "RE", 1),
    BneckRow(3, 64, 24, False, "RE", 2),
    BneckRow(3, 72, 24, False, "RE", 1),
    BneckRow(5, 72, 40, True, "RE", 2),
    BneckRow(5, 120, 40, True, "RE", 1),
    BneckRow(5, 120, 40, True, "RE", 1),
    BneckRow(3, 240, 80, False, "HS", 2),
    BneckRow(3, 200, 80, False, "HS", 1),
    BneckRow(3, 184, 80, False, "HS", 1),
    BneckRow(3, 184, 80, False, "HS", 1),
    BneckRow(3, 480, 112, True, "HS", 1),
    BneckRow(3, 672, 112, True, "HS", 1),
    BneckRow(5, 672, 160, True, "HS", 2),
    BneckRow(5, 960, 160, True, "HS", 1),
    BneckRow(5, 960, 160, True, "HS", 1),
)

SMALL_TABLE = (
    BneckRow(3, 16, 16, True, "RE", 2),
    BneckRow(3, 72, 24, False, "RE", 2),
    BneckRow(3, 88, 24, False, "RE", 1),
    BneckRow(5, 96, 40, True, "HS", 2),
    BneckRow(5, 240, 40, True, "HS", 1),
    BneckRow(5, 240, 40, True, "HS", 1),
    BneckRow(5, 120, 48, True, "HS", 1),
    BneckRow(5, 144, 48, True, "HS", 1),
    BneckRow(5, 288, 96, True, "HS", 2),
    BneckRow(5, 576, 96, True, "HS", 1),
    BneckRow(5, 576, 96, True, "HS", 1),
)

STEM_CHANNELS = 16
LAST_CONV_EXPANSION = 6  # the last 1x1 conv widens the final block's output 6x (960 = 6 * 160, 576 = 6 * 96)
HEAD_CHANNELS = {"large": 1280, "small": 1024}
_PAPER_ACT = {"RE": "relu", "HS": "hardswish"}


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when exp == in) → kxk depthwise → SE (hard-sigmoid gate) → 1x1 projection."""

    def __init__(self, in_ch: int, exp_ch: int, out_ch: int, kernel_size: int, stride: int, use_se: bool,
                 act: str, drop_path: float = 0.0, round_nearest: int = 8):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.use_res_connect = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if exp_ch != in_ch:
            layers.append(ConvBNAct(in_ch, exp_ch, 1, act=act))
        layers.append(ConvBNAct(exp_ch, exp_ch, kernel_size, stride, groups=exp_ch, act=act))
        if use_se:
            squeeze = make_divisible(exp_ch // 4, round_nearest)
            layers.append(SqueezeExcite(exp_ch, squeeze, act="relu", gate="hardsigmoid"))
        layers.append(ConvBNAct(exp_ch, out_ch, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = out_ch
        self.drop_path = DropPath(drop_path) if self.use_res_connect and drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.drop_path(self.block(x))
        return self.block(x)


class MobileNetV3(ClassifierModel):
    """MobileNetV3 built from a bneck table (``LARGE_TABLE`` or ``SMALL_TABLE``).

    ``act_layer=None`` keeps the paper's choice per layer (ReLU where a row says RE, hard-swish
    for HS rows, the stem, the last conv and the classifier's hidden layer); a name such as
    ``"relu"`` or ``"mish"`` puts that activation in all of those places. The SE modules keep
    their ReLU and hard-sigmoid gate either way. ``small_input=True`` gives the stem and the first
    stride-2 block stride 1 (total stride 8), so a 32x32 image ends as a 4x4 feature map.
    ``drop_path_rate`` is the stochastic-depth rate of the last residual block, rising linearly
    from 0 over the blocks.
    """

    def __init__(self, table: tuple[BneckRow, ...], head_channels: int, num_classes: int = 1000,
                 width_mult: float = 1.0, act_layer: str | None = None, small_input: bool | str = False,
                 drop_rate: float = 0.2, drop_path_rate: float = 0.0, in_chans: int = 3, round_nearest: int = 8):
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.num_classes = num_classes

        def act_for(paper_nl: str) -> str:
            return _PAPER_ACT[paper_nl] if act_layer is None else act_layer

        def scaled(channels: int) -> int:
            return make_divisible(channels * width_mult, round_nearest)

        in_ch = scaled(STEM_CHANNELS)
        stem_stride, first_stride = input_strides(small_input)
        features: list[nn.Module] = [ConvBNAct(in_chans, in_ch, 3, stem_stride, act=act_for("HS"))]
        first_downsample = next(i for i, row in enumerate(table) if row.s == 2)
        for i, row in enumerate(table):
            stride = first_stride if i == first_downsample else row.s
            dp = drop_path_rate * i / max(1, len(table) - 1)
            out_ch = scaled(row.out)
            features.append(InvertedResidual(in_ch, scaled(row.exp), out_ch, row.k, stride, row.se,
                                             act_for(row.nl), dp, round_nearest))
            in_ch = out_ch
        last_conv_ch = LAST_CONV_EXPANSION * in_ch
        features.append(ConvBNAct(in_ch, last_conv_ch, 1, act=act_for("HS")))
        self.features = nn.Sequential(*features)

        hidden = scaled(head_channels)
        self.num_features = hidden
        self.classifier = nn.Sequential(
            nn.Linear(last_conv_ch, hidden),
            get_act(act_for("HS")),
            nn.Dropout(p=drop_rate),
            nn.Linear(hidden, num_classes),
        )
        self.default_cfg = default_cfg(32 if small_input else 224)
        init_weights(self)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = BN_EPS, BN_MOMENTUM

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = global_pool(x)
        x = self.classifier[0](x)
        x = self.classifier[1](x)
        x = self.classifier[2](x)
        return x if pre_logits else self.classifier[3](x)

    def get_classifier(self) -> nn.Linear:
        return self.classifier[3]

    def _set_classifier(self, layer: nn.Module) -> None:
        self.classifier[3] = layer


@register_model(reference="torchvision mobilenet_v3_small: 2,542,856 params; paper Table 3: 2.5M params, 56M MACs",
                torchvision_name="mobilenet_v3_small")
def mobilenet_v3_small(*, num_classes: int = 1000, **kwargs) -> MobileNetV3:
    """MobileNetV3-Small (Table 2); ``width_mult`` scales every layer including the 1024-d head."""
    return MobileNetV3(SMALL_TABLE, HEAD_CHANNELS["small"], num_classes=num_classes, **kwargs)


@register_model(reference="torchvision mobilenet_v3_large: 5,483,032 params; paper Table 3: 5.4M params, 219M MACs",
                torchvision_name="mobilenet_v3_large")
def mobilenet_v3_large(*, num_classes: int = 1000, **kwargs) -> MobileNetV3:
    """MobileNetV3-Large (Table 1); ``width_mult`` scales every layer including the 1280-d head."""
    return MobileNetV3(LARGE_TABLE, HEAD_CHANNELS["large"], num_classes=num_classes, **kwargs)
