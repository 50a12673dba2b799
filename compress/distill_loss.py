"""Knowledge-distillation loss (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network").

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, y)

The T^2 factor keeps the soft-target gradients on the same scale as the hard-label ones when the
temperature changes. Multilabel tasks use per-label sigmoid BCE against the teacher's
temperature-softened probabilities in place of the KL term.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, *,
            temperature: float = 4.0, alpha: float = 0.7, task: str = "multiclass",
            hard_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Hinton's distillation loss (mean over the batch). ``target`` holds class indices or a
    (N, K) distribution such as mixup/cutmix soft labels (multiclass), or 0/1 (or soft) label
    vectors (multilabel). ``hard_loss(student_logits, target)`` replaces the default hard term
    (cross-entropy / BCE), e.g. with the training loss carrying label smoothing. The teacher's
    logits are detached; both are computed in float32 (safe under autocast)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    t = float(temperature)
    student_logits = student_logits.float()
    teacher_logits = teacher_logits.detach().float()
    if task == "multilabel":
        soft = F.binary_cross_entropy_with_logits(student_logits / t, torch.sigmoid(teacher_logits / t))
    else:
        soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                        reduction="batchmean", log_target=True)
    if alpha == 1.0:
        return t * t * soft
    if hard_loss is not None:
        hard = hard_loss(student_logits, target)
    elif task == "multilabel":
        hard = F.binary_cross_entropy_with_logits(student_logits, target.float())
    else:
        hard = F.cross_entropy(student_logits, target.long()) if target.ndim == 1 else \
            torch.sum(-target.float() * F.log_softmax(student_logits, dim=1), dim=1).mean()
    return alpha * t * t * soft + (1.0 - alpha) * hard


class DistillationLoss(nn.Module):
    """:func:`kd_loss` as a module holding its temperature, weight and task."""

    def __init__(self, temperature: float = 4.0, alpha: float = 0.7, task: str = "multiclass"):
        super().__init__()
        self.temperature, self.alpha, self.task = float(temperature), float(alpha), task

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return kd_loss(student_logits, teacher_logits, target, temperature=self.temperature, alpha=self.alpha,
                       task=self.task)
