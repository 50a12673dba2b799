"""Training losses. Every loss takes logits (N, K) and targets that are either class indices
(N,) or a (N, K) float matrix (soft labels from mixup/cutmix, or 0/1 label sets for multilabel).

multiclass: ``ce`` (cross-entropy, optional label smoothing) and ``focal`` (Lin et al. 2017,
softmax form: ``-sum_c t_c (1 - p_c)^gamma log p_c``, with the same label smoothing).
multilabel: ``bce`` (binary cross-entropy with logits) and ``focal`` (sigmoid focal loss).

Distillation: :func:`kd_loss`, Hinton et al. 2015 ("Distilling the Knowledge in a Neural Network"):
``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * hard``. The T^2
factor keeps the soft-target gradients on the same scale as the hard-label ones when the
temperature changes. Multilabel tasks use per-label sigmoid BCE against the teacher's
temperature-softened probabilities in place of the KL term.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError

MULTICLASS_LOSSES = ("ce", "focal")
MULTILABEL_LOSSES = ("bce", "focal")


def soft_targets(target: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Class indices or a distribution → a (N, K) distribution, smoothed towards uniform by ``smoothing``."""
    if target.ndim == 1:
        target = F.one_hot(target.long(), num_classes).float()
    if smoothing > 0:
        target = target * (1.0 - smoothing) + smoothing / num_classes
    return target


def _mean(per_sample: torch.Tensor, target: torch.Tensor, class_weight: torch.Tensor | None) -> torch.Tensor:
    """The batch mean of ``per_sample`` losses, each weighted by its label's class weight (for a
    mixup/cutmix target, the mix of its labels' weights). The weight follows the label, not
    the smoothed target's mass: weighting that mass per class would put a common-class sample's
    smoothing on the rare classes above its own label. A plain mean (not PyTorch's ``weight=``
    mean, which divides by the batch's total weight), so weights of mean 1 keep the loss scale."""
    if class_weight is None:
        return per_sample.mean()
    w = class_weight.to(per_sample.device, per_sample.dtype)
    return (per_sample * (soft_targets(target, w.numel()).to(per_sample.dtype) @ w)).mean()


class SoftCrossEntropy(nn.Module):
    """Cross-entropy that accepts class indices or soft targets; ``smoothing`` is label smoothing."""

    def __init__(self, smoothing: float = 0.0):
        super().__init__()
        self.smoothing = smoothing
        self.class_weight: torch.Tensor | None = None  # (K,): --balance class-weights

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if target.ndim == 1 and self.smoothing == 0 and self.class_weight is None:
            return F.cross_entropy(logits, target)
        t = soft_targets(target, logits.shape[1], self.smoothing)
        return _mean(-(t * F.log_softmax(logits, dim=1)).sum(dim=1), target, self.class_weight)


class FocalLoss(nn.Module):
    """Softmax focal loss: cross-entropy down-weighted by ``(1 - p)^gamma`` on easy classes."""

    def __init__(self, gamma: float = 2.0, smoothing: float = 0.0):
        super().__init__()
        self.gamma = gamma
        self.smoothing = smoothing
        self.class_weight: torch.Tensor | None = None  # (K,): --balance class-weights

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        t = soft_targets(target, logits.shape[1], self.smoothing)
        logp = F.log_softmax(logits, dim=1)
        return _mean(-(t * (1 - logp.exp()).pow(self.gamma) * logp).sum(dim=1), target, self.class_weight)


class BinaryFocalLoss(nn.Module):
    """Sigmoid focal loss for multilabel 0/1 (or soft) targets, averaged over samples and labels."""

    def __init__(self, gamma: float = 2.0):
        super().__init__()
        self.gamma = gamma
        self.class_weight: torch.Tensor | None = None  # (K,) BCE pos_weight: --balance class-weights

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        bce = F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none",
                                                 pos_weight=_on(self.class_weight, logits))
        p = torch.sigmoid(logits)
        p_t = p * target + (1 - p) * (1 - target)
        return ((1 - p_t).pow(self.gamma) * bce).mean()


class BCEWithLogits(nn.Module):
    def __init__(self):
        super().__init__()
        self.class_weight: torch.Tensor | None = None  # (K,) pos_weight: --balance class-weights

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), target.float(),
                                                  pos_weight=_on(self.class_weight, logits))


def _on(weight: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if weight is None else weight.to(like.device, torch.float32)


def build_loss(name: str, task: str, *, label_smoothing: float = 0.0, focal_gamma: float = 2.0) -> nn.Module:
    """The training loss for ``task``; ``name`` "auto" means ``ce`` (multiclass) / ``bce`` (multilabel)."""
    if not 0.0 <= label_smoothing < 1.0:
        raise UserError(f"label smoothing must be in [0, 1), got {label_smoothing}")
    if focal_gamma < 0:
        raise UserError(f"focal gamma must be >= 0, got {focal_gamma}")
    if task == "multilabel":
        name = "bce" if name == "auto" else name
        if name not in MULTILABEL_LOSSES:
            raise UserError(f"loss {name!r} does not fit a multilabel task; choose one of {', '.join(MULTILABEL_LOSSES)}")
        return BCEWithLogits() if name == "bce" else BinaryFocalLoss(focal_gamma)
    name = "ce" if name == "auto" else name
    if name not in MULTICLASS_LOSSES:
        raise UserError(f"loss {name!r} does not fit a multiclass task; choose one of {', '.join(MULTICLASS_LOSSES)}")
    return SoftCrossEntropy(label_smoothing) if name == "ce" else FocalLoss(focal_gamma, label_smoothing)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, *,
            temperature: float = 4.0, alpha: float = 0.7, task: str = "multiclass",
            hard_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Hinton's distillation loss (mean over the batch). ``target`` holds class indices or a
    (N, K) distribution such as mixup/cutmix soft labels (multiclass), or 0/1 (or soft) label
    vectors (multilabel). ``hard_loss(student_logits, target)`` replaces the default hard term
    (cross-entropy / BCE), e.g. with the training loss carrying label smoothing. The teacher's
    logits are detached; both are computed in float32 (safe under autocast)."""
    if temperature <= 0:
        raise UserError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"alpha must be in [0, 1], got {alpha}")
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
