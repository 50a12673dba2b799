"""What the training loop minimises, as an object handed to :func:`~compress.training.loop.fit`.

A criterion computes the loss of one batch from the student's logits, the (augmented) inputs and
the targets, and may own extra networks (a teacher) that it prepares before training and gives
back afterwards. Plain training, distillation (and later quantization-aware training) are
criteria, not branches of the loop.

    fit(student, bundle, cfg, criterion=DistillationCriterion(teacher, build_loss("ce", "multiclass")))
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn

from ..errors import UserError
from .losses import build_loss, kd_loss

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Criterion:
    """The loss of one batch. ``setup`` runs before the first step (on every process), ``teardown``
    after the last (also on error); ``describe`` is recorded in logs and reports."""

    name = "criterion"

    def setup(self, device: torch.device) -> None:
        pass

    def teardown(self) -> None:
        pass

    def __call__(self, logits: torch.Tensor, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


class SupervisedCriterion(Criterion):
    """The training loss against the (possibly mixed or smoothed) labels."""

    name = "supervised"

    def __init__(self, loss: Loss):
        self.loss = loss

    def __call__(self, logits: torch.Tensor, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, target)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "loss": type(self.loss).__name__}


class DistillationCriterion(Criterion):
    """Hinton's knowledge distillation (:func:`~compress.training.losses.kd_loss`): ``alpha * T^2 *
    soft + (1 - alpha) * hard``, ``hard`` being the configured training loss (label smoothing,
    focal, soft mixup targets keep their meaning).

    The teacher runs in eval mode under ``no_grad`` on the very batch the student sees, after
    augmentation; with mixup/cutmix that is the mixed image, so the soft term matches the
    teacher's prediction on exactly the student's input ("function matching"). It is moved to the
    training device, never wrapped in DistributedDataParallel (it takes no gradients; each process
    runs it on its own shard), never updated, and given back in its original train/eval mode."""

    name = "distillation"

    def __init__(self, teacher: nn.Module, hard_loss: Loss, *, temperature: float = 4.0, alpha: float = 0.7,
                 task: str = "multiclass"):
        if not temperature > 0:
            raise UserError(f"distillation temperature must be > 0, got {temperature}")
        if not 0 <= alpha <= 1:
            raise UserError(f"distillation alpha must be in [0, 1], got {alpha}")
        self.teacher, self.hard_loss = teacher, hard_loss
        self.temperature, self.alpha, self.task = float(temperature), float(alpha), task
        self._teacher_was_training = teacher.training

    def setup(self, device: torch.device) -> None:
        self._teacher_was_training = self.teacher.training
        self.teacher.to(device).eval()

    def teardown(self) -> None:
        self.teacher.train(self._teacher_was_training)

    def __call__(self, logits: torch.Tensor, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(inputs)
        if teacher_logits.shape != logits.shape:
            raise UserError(f"the teacher has {teacher_logits.shape[-1]} outputs but the student has "
                            f"{logits.shape[-1]}; distillation needs the same classes")
        return kd_loss(logits, teacher_logits, target, temperature=self.temperature, alpha=self.alpha,
                       task=self.task, hard_loss=self.hard_loss)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "loss": "hinton_kd", "temperature": self.temperature, "alpha": self.alpha,
                "teacher": getattr(self.teacher, "arch", type(self.teacher).__name__)}


def training_loss(cfg, task: str) -> Loss:
    """The configured hard-label loss of a :class:`~compress.training.config.TrainConfig`."""
    return build_loss(cfg.loss, task, label_smoothing=cfg.label_smoothing, focal_gamma=cfg.focal_gamma)


def build_criterion(cfg, task: str, *, teacher: nn.Module | None = None, temperature: float = 4.0,
                    alpha: float = 0.7) -> Criterion:
    """The configured training loss, distilled from ``teacher`` when one is given."""
    loss = training_loss(cfg, task)
    if teacher is None:
        return SupervisedCriterion(loss)
    return DistillationCriterion(teacher, loss, temperature=temperature, alpha=alpha, task=task)
