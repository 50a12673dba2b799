"""Feature hints (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets"): the student's feature
map at one layer is regressed onto the teacher's at another, through a learned 1x1 convolution
(+ BatchNorm) when their widths differ. The default layer on both sides is ``forward_features``,
the last feature map before pooling (every zoo model has one); any module name from
``model.named_modules()`` also works. When the spatial sizes differ, the larger map is
average-pooled to the smaller. The loss is the mean squared error times ``weight``.

The features are captured by forward hooks while the student and teacher run as usual, so the
training loop is unchanged; the adapter's parameters join the optimizer (the criterion hands
them over). Under torchrun the adapter is not synchronised between processes (it only shapes
the loss; the student's gradients are averaged as always).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError

FORWARD_FEATURES = "forward_features"


class _Tap:
    """The output of one layer (or of ``forward_features``) of a model, captured on every forward."""

    def __init__(self, model: nn.Module, layer: str, who: str):
        self.model, self.layer, self.value = model, layer, None
        self._handle = None
        self._patched = False
        if layer == FORWARD_FEATURES:
            inner = getattr(model, FORWARD_FEATURES, None)
            if not callable(inner):
                raise UserError(f"the {who} ({type(model).__name__}) has no forward_features; name a layer "
                                f"with --{who}-hint-layer")

            def tapped(x: torch.Tensor) -> torch.Tensor:
                out = inner(x)
                self.value = out
                return out

            model.forward_features = tapped  # an instance attribute over the class method
            self._patched = True
        else:
            modules = dict(model.named_modules())
            if layer not in modules or not layer:
                names = [n for n, m in model.named_modules() if n and isinstance(m, (nn.Conv2d, nn.Sequential))]
                raise UserError(f"the {who} ({getattr(model, 'arch', type(model).__name__)}) has no layer named "
                                f"{layer!r}; e.g. {', '.join(names[-4:])} (or forward_features)")
            self._handle = modules[layer].register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self.value = output

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
        if self._patched:
            del self.model.forward_features
        self.value = None


def _as_map(x: Any, layer: str, who: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim not in (2, 4):
        raise UserError(f"the {who}'s hint layer {layer!r} does not output a feature map (N, C, H, W)")
    return x if x.ndim == 4 else x[:, :, None, None]


class FeatureHint:
    """A hint between ``student_layer`` and ``teacher_layer``, weighted by ``weight``."""

    def __init__(self, student_layer: str = FORWARD_FEATURES, teacher_layer: str = FORWARD_FEATURES,
                 weight: float = 1.0):
        if not weight > 0:
            raise UserError(f"the hint weight must be > 0, got {weight}")
        self.student_layer, self.teacher_layer, self.weight = student_layer, teacher_layer, float(weight)
        self.adapter: nn.Module = nn.Identity()
        self._taps: list[_Tap] = []
        self.shapes: dict[str, list[int]] = {}

    def attach(self, student: nn.Module, teacher: nn.Module, example: torch.Tensor, device: torch.device) -> None:
        """Hook both networks and build the adapter from one dry forward of ``example``."""
        self.detach()
        inner = getattr(teacher, "inner", teacher)  # a TeacherInput wrapper: hook the network itself
        s_tap = _Tap(student, self.student_layer, "student")
        try:
            t_tap = _Tap(inner, self.teacher_layer, "teacher")
        except BaseException:
            s_tap.remove()  # no hook left on the student when the teacher's layer is wrong
            raise
        self._taps = [s_tap, t_tap]
        was = student.training
        try:
            student.eval()
            with torch.no_grad():
                student(example.to(device))
                teacher(example.to(device))
            s = _as_map(s_tap.value, self.student_layer, "student")
            t = _as_map(t_tap.value, self.teacher_layer, "teacher")
        except BaseException:
            self.detach()
            raise
        finally:
            student.train(was)
            s_tap.value = t_tap.value = None
        self.shapes = {"student": list(s.shape[1:]), "teacher": list(t.shape[1:])}
        if s.shape[1] != t.shape[1]:
            self.adapter = nn.Sequential(nn.Conv2d(s.shape[1], t.shape[1], 1, bias=False), nn.BatchNorm2d(t.shape[1]))
        self.adapter.to(device).train()

    def detach(self) -> None:
        for tap in self._taps:
            tap.remove()
        self._taps = []

    def parameters(self) -> list[nn.Parameter]:
        return list(self.adapter.parameters())

    def loss(self) -> torch.Tensor:
        """The weighted MSE between the features captured in the last forward of both networks."""
        s_tap, t_tap = self._taps
        s = _as_map(s_tap.value, self.student_layer, "student")
        t = _as_map(t_tap.value, self.teacher_layer, "teacher").detach()
        s = self.adapter(s.contiguous()).float()
        t = t.float()
        if s.shape[-2:] != t.shape[-2:]:
            size = (min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1]))
            s, t = F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size)
        return self.weight * F.mse_loss(s, t)

    def describe(self) -> dict[str, Any]:
        return {"student_layer": self.student_layer, "teacher_layer": self.teacher_layer, "weight": self.weight,
                "adapter": "1x1 conv + BN" if not isinstance(self.adapter, nn.Identity) else "none",
                "shapes": self.shapes}
