"""Building blocks shared by the architectures: activations by name, conv-BN-act, squeeze-excite,
stochastic depth, channel rounding, and the common classifier surface."""
from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": lambda: nn.ReLU6(inplace=True),
    "hardswish": lambda: nn.Hardswish(inplace=True),
    "hard_swish": lambda: nn.Hardswish(inplace=True),
    "silu": lambda: nn.SiLU(inplace=True),
    "swish": lambda: nn.SiLU(inplace=True),
    "mish": lambda: nn.Mish(inplace=True),
    "gelu": lambda: nn.GELU(),
    "sigmoid": lambda: nn.Sigmoid(),
    "hardsigmoid": lambda: nn.Hardsigmoid(inplace=True),
    "identity": lambda: nn.Identity(),
}


def activation_names() -> list[str]:
    return sorted(_ACTIVATIONS)


def get_act(name: str | None) -> nn.Module:
    """A fresh activation module for ``name`` (``None`` means identity)."""
    if name is None:
        return nn.Identity()
    if not isinstance(name, str) or name.lower() not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(activation_names())}")
    return _ACTIVATIONS[name.lower()]()


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` without dropping more than 10%."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) → BatchNorm2d → activation. Indices 0/1/2 keep torchvision's layout."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                 act: str | None = "relu", dilation: int = 1):
        padding = (kernel_size - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        if act is not None:
            layers.append(get_act(act))
        super().__init__(*layers)
        self.out_channels = out_ch


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation with 1x1 convs (``fc1``/``fc2``, as torchvision names them)."""

    def __init__(self, channels: int, squeeze_channels: int, act: str = "relu", gate: str = "sigmoid"):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.activation = get_act(act)
        self.scale_activation = get_act(gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return x * s


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016): drop whole residual branches per sample."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


def check_unused_drop_path(rate: float, family: str) -> None:
    """For families without residual blocks: validate ``drop_path_rate`` like ``DropPath`` does,
    and warn that it cannot act (the keyword is accepted so every model takes the same ones)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {rate}")
    if rate > 0:
        warnings.warn(f"{family} has no residual blocks; drop_path_rate has no effect", stacklevel=3)


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ClassifierModel(nn.Module):
    """The surface every architecture exposes.

    Subclasses implement ``forward_features`` (image → feature map) and ``forward_head``
    (feature map → logits, or pooled features with ``pre_logits=True``), and keep their final
    ``nn.Linear`` reachable through ``get_classifier`` (pruning protects it, distillation taps
    the features before it). ``default_cfg`` carries the preprocessing facts.
    """

    num_classes: int
    num_features: int  # width of the vector that enters the final Linear
    default_cfg: dict

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def get_classifier(self) -> nn.Linear:  # pragma: no cover - abstract
        raise NotImplementedError

    def _set_classifier(self, layer: nn.Module) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final Linear with a fresh one for ``num_classes`` outputs."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        old = self.get_classifier()
        new = nn.Linear(old.in_features, num_classes)
        nn.init.normal_(new.weight, 0, 0.01)
        nn.init.zeros_(new.bias)
        self._set_classifier(new)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class SequentialFeaturesModel(ClassifierModel):
    """The common torchvision shape: ``self.features`` (nn.Sequential) → global average pool →
    ``self.classifier`` = Sequential(Dropout, Linear). MobileNetV1/V2 and EfficientNet use it."""

    features: nn.Sequential
    classifier: nn.Sequential

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = global_pool(x)
        return x if pre_logits else self.classifier(x)

    def get_classifier(self) -> nn.Linear:
        return self.classifier[-1]

    def _set_classifier(self, layer: nn.Module) -> None:
        self.classifier[-1] = layer


def input_strides(small_input: bool | str) -> tuple[int, int]:
    """(stem stride, stride of the first downsampling stage) for a ``small_input`` mode.

    ``False``: the ImageNet layout, total stride 32 (a 32x32 image ends as a 1x1 map).
    ``"stem"``: only the stem keeps full resolution, total stride 16 (2x2 at 32px, ~1/4 of the
    compute of ``True`` past the stem). ``True``: the stem and the first downsampling stage keep
    full resolution, total stride 8 (4x4 at 32px)."""
    if small_input is True:
        return 1, 1
    if small_input is False or small_input is None:
        return 2, 2
    if small_input == "stem":
        return 1, 2
    raise ValueError(f"small_input must be True, False or 'stem', got {small_input!r}")


def default_cfg(input_size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation: str = "bilinear") -> dict:
    return {"input_size": (3, input_size, input_size), "mean": tuple(mean), "std": tuple(std),
            "interpolation": interpolation}


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs, unit BN, small-normal linears (the MobileNet/EfficientNet recipe)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def global_pool(x: torch.Tensor) -> torch.Tensor:
    return F.adaptive_avg_pool2d(x, 1).flatten(1)
