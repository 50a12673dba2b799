"""The teacher: any model artifact whose classes are the student's. When it was trained on another
input size or normalisation than the student, :class:`TeacherInput` turns the student's batch
into the teacher's input (undo the student's mean/std, resize, apply the teacher's)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError


class TeacherInput(nn.Module):
    """``teacher`` fed the student's batches: identity when both use the same input, else a
    re-normalisation and a resize (bilinear, as the data loaders resize)."""

    def __init__(self, teacher: nn.Module, *, student_mean: Sequence[float], student_std: Sequence[float],
                 teacher_mean: Sequence[float], teacher_std: Sequence[float], teacher_size: int | None):
        super().__init__()
        self.inner = teacher
        self.arch = getattr(teacher, "arch", type(teacher).__name__)
        same_norm = list(student_mean) == list(teacher_mean) and list(student_std) == list(teacher_std)
        self.renormalise = not same_norm
        self.size = teacher_size
        view = lambda v: torch.tensor(list(v), dtype=torch.float32).view(1, -1, 1, 1)  # noqa: E731
        self.register_buffer("s_mean", view(student_mean), persistent=False)
        self.register_buffer("s_std", view(student_std), persistent=False)
        self.register_buffer("t_mean", view(teacher_mean), persistent=False)
        self.register_buffer("t_std", view(teacher_std), persistent=False)

    @property
    def adapts(self) -> bool:
        return self.renormalise or self.size is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.renormalise:
            x = (x * self.s_std + self.s_mean - self.t_mean) / self.t_std
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return self.inner(x)


def load_teacher(path: str | os.PathLike, *, labels: Sequence[str], task: str, num_classes: int,
                 input_size: Sequence[int], mean: Sequence[float], std: Sequence[float],
                 what: str = "the student") -> tuple[nn.Module, object]:
    """The teacher artifact at ``path`` (eval mode, frozen) wrapped for the student's input, and its
    metadata. One-line errors: not an artifact, a different task, class count or label set."""
    from ..artifact import load_model

    teacher, meta = load_model(path)
    if meta.task != task:
        raise UserError(f"teacher {path} is a {meta.task} model but {what} is {task}")
    if meta.num_classes != num_classes:
        raise UserError(f"teacher {path} has {meta.num_classes} classes but {what} has {num_classes}; "
                        f"distillation needs the same classes")
    if list(meta.labels) != list(labels):
        diff = next((i for i, (a, b) in enumerate(zip(meta.labels, labels)) if a != b), 0)
        raise UserError(f"teacher {path} has other labels than {what} (class {diff}: {meta.labels[diff]!r} vs "
                        f"{list(labels)[diff]!r}); distillation needs the same label set in the same order")
    for p in teacher.parameters():
        p.requires_grad_(False)
    size = int(meta.input_size[-1]) if list(meta.input_size[-2:]) != list(input_size[-2:]) else None
    wrapped = TeacherInput(teacher, student_mean=mean, student_std=std, teacher_mean=meta.mean,
                           teacher_std=meta.std, teacher_size=size)
    return wrapped.eval(), meta


def cache_dir() -> Path:
    """Where teacher logits are kept between runs: ``$COMPRESS_CACHE_DIR/teacher-logits``
    (default ``~/.cache/compress``)."""
    root = os.environ.get("COMPRESS_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "compress")
    return Path(root) / "teacher-logits"


def logits_cache_file(teacher_path: str | os.PathLike, data: Mapping[str, Any]) -> Path:
    """The cache file of one teacher artifact's logits on one training set: named by the hash of
    the teacher file's bytes and of the data facts (source, split seed, sizes, preprocessing), so a
    changed teacher or split never reads stale logits."""
    h = hashlib.sha256()
    with open(teacher_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    d = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
    return cache_dir() / f"{h.hexdigest()[:20]}-{d[:20]}.safetensors"
