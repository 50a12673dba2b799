"""ResNet-18/34/50 (He et al., 2016, "Deep Residual Learning for Image Recognition", Table 1).

Bottleneck is the "v1.5" variant torchvision uses (stride on the 3x3 conv, not the first 1x1).
Optional stochastic depth (Huang et al., 2016, "Deep Networks with Stochastic Depth"): the
residual branch of block ``l`` of ``L`` is dropped with probability ``drop_path_rate * l / L``
(the linear decay rule, l = 1..L), so the last block reaches ``drop_path_rate``.

Module names follow torchvision's layout (``conv1, bn1, layer1..4, fc``); with the ImageNet stem
(``small_input=False``) ``torchvision.models.resnet18().state_dict()`` loads unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ._layers import ClassifierModel, DropPath, default_cfg, get_act, global_pool, init_weights, input_strides
from ._registry import register_model


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride, padding=1, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)


def _drop_path_or_identity(p: float) -> nn.Module:
    return DropPath(p) if p > 0 else nn.Identity()


class BasicBlock(nn.Module):
    """Two 3x3 convs (stride on the first) plus a shortcut; output width = ``planes``."""
    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 act: str = "relu", drop_path: float = 0.0):
        super().__init__()
        self.conv1 = conv3x3(in_ch, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = get_act(act)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.drop_path = _drop_path_or_identity(drop_path)
        self.act2 = get_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(self.drop_path(out) + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce → 3x3 (carries the stride, "v1.5") → 1x1 expand to ``4 * planes``, plus a shortcut."""
    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 act: str = "relu", drop_path: float = 0.0):
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = conv1x1(in_ch, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = get_act(act)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = get_act(act)
        self.conv3 = conv1x1(planes, out_ch)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.downsample = downsample
        self.drop_path = _drop_path_or_identity(drop_path)
        self.act3 = get_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act3(self.drop_path(out) + shortcut)


@dataclass(frozen=True)
class StageRow:
    """One conv stage of the paper's Table 1: base width ``planes``, blocks ``n``, first stride ``s``."""
    planes: int
    n: int
    s: int


def paper_stages(blocks: tuple[int, int, int, int]) -> tuple[StageRow, ...]:
    """conv2_x..conv5_x: widths 64/128/256/512; every stage but the first halves the resolution."""
    return tuple(StageRow(p, n, s) for p, n, s in zip((64, 128, 256, 512), blocks, (1, 2, 2, 2)))


class ResNet(ClassifierModel):
    """ResNet with the ImageNet stem (7x7/2 conv + 3x3/2 max-pool) or, with ``small_input=True``,
    the CIFAR stem (3x3/1 conv, no max-pool) so a 32x32 image ends as a 4x4 map; with
    ``small_input="stem"`` a 3x3/1 conv and the max-pool (total stride 16, a 2x2 map at 32px).
    ``drop_rate`` is dropout before ``fc`` (0 in the paper)."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], blocks: tuple[int, int, int, int],
                 num_classes: int = 1000, act_layer: str = "relu", small_input: bool | str = False,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, in_chans: int = 3):
        super().__init__()
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.num_classes = num_classes
        stem_ch = 64
        stem_stride, pool_stride = input_strides(small_input)
        if stem_stride == 1:
            self.conv1 = nn.Conv2d(in_chans, stem_ch, 3, 1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_chans, stem_ch, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_ch)
        self.act = get_act(act_layer)
        self.maxpool = nn.Identity() if pool_stride == 1 else nn.MaxPool2d(3, 2, padding=1)

        stages = paper_stages(blocks)
        total_blocks = sum(r.n for r in stages)
        block_idx = 0
        in_ch = stem_ch
        for stage_idx, row in enumerate(stages, start=1):
            out_ch = row.planes * block.expansion
            layers: list[nn.Module] = []
            for i in range(row.n):
                stride = row.s if i == 0 else 1
                downsample = None
                if stride != 1 or in_ch != out_ch:
                    downsample = nn.Sequential(conv1x1(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))
                block_idx += 1
                dp = drop_path_rate * block_idx / total_blocks
                layers.append(block(in_ch, row.planes, stride, downsample, act_layer, dp))
                in_ch = out_ch
            setattr(self, f"layer{stage_idx}", nn.Sequential(*layers))

        self.num_features = in_ch
        self.head_drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc = nn.Linear(in_ch, num_classes)
        self.default_cfg = default_cfg(32 if small_input else 224)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = global_pool(x)
        return x if pre_logits else self.fc(self.head_drop(x))

    def get_classifier(self) -> nn.Linear:
        return self.fc

    def _set_classifier(self, layer: nn.Module) -> None:
        self.fc = layer


@register_model(reference="torchvision resnet18: 11,689,512 params, 1.8B FLOPs (paper Table 1)",
                torchvision_name="resnet18")
def resnet18(*, num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-18: BasicBlock x (2, 2, 2, 2)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes=num_classes, **kwargs)


@register_model(reference="torchvision resnet34: 21,797,672 params, 3.6B FLOPs (paper Table 1)",
                torchvision_name="resnet34")
def resnet34(*, num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-34: BasicBlock x (3, 4, 6, 3)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes=num_classes, **kwargs)


@register_model(reference="torchvision resnet50: 25,557,032 params, 3.8B FLOPs (paper Table 1)",
                torchvision_name="resnet50")
def resnet50(*, num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-50: Bottleneck (v1.5) x (3, 4, 6, 3)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, **kwargs)
