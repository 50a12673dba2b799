"""Distillation losses on logits, written from the papers.

``kd``   Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network":
         ``alpha * T^2 * KL(p_t^T || p_s^T) + (1 - alpha) * hard`` (:func:`~compress.training.losses.kd_loss`;
         multi-label tasks use per-label sigmoid targets in place of the softmax KL).
``dkd``  Zhao et al. CVPR 2022, "Decoupled Knowledge Distillation": the KD term splits into
         target-class KD (TCKD, a KL between the binary distributions [p_gt, 1 - p_gt]) and
         non-target-class KD (NCKD, a KL between the distributions over the other classes), with
         ``KD = TCKD + (1 - p_t,gt) * NCKD``; DKD weighs them freely:
         ``hard + T^2 * (alpha * TCKD + beta * NCKD)``, ramped in linearly over a warm-up.
``dist`` Huang et al. NeurIPS 2022, "Knowledge Distillation from A Stronger Teacher": Pearson
         correlation instead of KL, between the softened probability vectors of each sample
         (inter-class relation) and between the columns of each class across the batch
         (intra-class relation): ``hard + T^2 * (beta * (1 - inter) + gamma * (1 - intra))``.

Defaults (:class:`DistillLoss`) and their sources:
- temperature 4: Hinton KD's common CIFAR setting, and both DKD's (mdistiller CIFAR-100 configs,
  T = 4) and DIST's CIFAR-100 setting (tau = 4); ImageNet runs use 1.
- alpha 0.7 (Hinton only): the weight of the soft term, 1 - alpha on the labels (the value this
  project's prune stage used; the original paper leaves it free).
- DKD alpha 1, beta 8, cross-entropy weight 1: mdistiller's CIFAR-100 configs (beta ranges 1-8
  with the pair; ImageNet uses 0.5/0.5, T = 1). Warm-up: mdistiller ramps DKD in over 20 of 240
  epochs; our runs are 5-20 epochs, so the default is one epoch.
- DIST beta = gamma = 2, cross-entropy weight 1: the paper's CIFAR-100 setting (ImageNet: 1, 1, tau 1).

The hard term of ``dkd`` and ``dist`` is the configured training loss (label smoothing kept) at
weight 1, as in both papers. DKD needs a class index per sample: with soft (mixup/cutmix)
targets it uses the largest entry.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..training.losses import kd_loss

KD_LOSSES = ("kd", "dkd", "dist")
MULTILABEL_KD_LOSSES = ("kd",)

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _kl_rows(p_teacher: torch.Tensor, log_p_student: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of each row, with 0 * log 0 = 0."""
    log_t = torch.log(p_teacher.clamp_min(1e-12))
    return (p_teacher * (log_t - log_p_student)).sum(dim=1)


def dkd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, gt: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (TCKD, NCKD) at ``temperature``, without the T^2 factor. ``gt`` holds class indices."""
    t = float(temperature)
    s, te = student_logits.float() / t, teacher_logits.detach().float() / t
    mask = F.one_hot(gt.long(), s.shape[1]).bool()
    p_s, p_t = F.softmax(s, dim=1), F.softmax(te, dim=1)
    # the binary split [p_gt, 1 - p_gt]
    ps_gt, pt_gt = p_s[mask], p_t[mask]
    b_s = torch.stack([ps_gt, 1.0 - ps_gt], dim=1).clamp_min(1e-12)
    b_t = torch.stack([pt_gt, 1.0 - pt_gt], dim=1)
    tckd = _kl_rows(b_t, torch.log(b_s))
    # the distribution over the non-target classes: softmax with the target logit removed
    hide = torch.finfo(s.dtype).min
    log_q_s = F.log_softmax(s.masked_fill(mask, hide), dim=1).masked_fill(mask, 0.0)
    q_t = F.softmax(te.masked_fill(mask, hide), dim=1).masked_fill(mask, 0.0)
    nckd = _kl_rows(q_t, log_q_s)
    return tckd, nckd


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, gt: torch.Tensor, *,
             temperature: float = 4.0, alpha: float = 1.0, beta: float = 8.0) -> torch.Tensor:
    """Decoupled KD's distillation term (batch mean): ``T^2 * (alpha * TCKD + beta * NCKD)``."""
    tckd, nckd = dkd_terms(student_logits, teacher_logits, gt, temperature)
    return float(temperature) ** 2 * (alpha * tckd + beta * nckd).mean()


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 4.0,
              beta: float = 2.0, gamma: float = 2.0) -> torch.Tensor:
    """DIST's distillation term: ``T^2 * (beta * (1 - mean inter-class correlation) + gamma * (1 -
    mean intra-class correlation))`` of the softened probabilities."""
    t = float(temperature)
    y_s = F.softmax(student_logits.float() / t, dim=1)
    y_t = F.softmax(teacher_logits.detach().float() / t, dim=1)
    inter = 1.0 - _pearson_rows(y_s, y_t).mean()
    intra = 1.0 - _pearson_rows(y_s.t(), y_t.t()).mean() if y_s.shape[0] > 1 else y_s.new_zeros(())
    return t * t * (beta * inter + gamma * intra)


def class_indices(target: torch.Tensor) -> torch.Tensor:
    """Class indices from indices or a (N, K) distribution (its largest entry)."""
    return target.long() if target.ndim == 1 else target.argmax(dim=1)


@dataclass
class DistillLoss:
    """Which distillation loss, and its weights (defaults and their sources: the module docstring)."""

    name: str = "kd"
    temperature: float = 4.0
    alpha: float = 0.7          # Hinton: weight of the soft term
    dkd_alpha: float = 1.0      # DKD: weight of TCKD
    dkd_beta: float = 8.0       # DKD: weight of NCKD
    dkd_warmup_epochs: float = 1.0
    dist_beta: float = 2.0      # DIST: inter-class relation
    dist_gamma: float = 2.0     # DIST: intra-class relation

    def __post_init__(self) -> None:
        if self.name not in KD_LOSSES:
            raise UserError(f"unknown distillation loss {self.name!r}; choose one of {', '.join(KD_LOSSES)}")
        if not self.temperature > 0:
            raise UserError(f"distillation temperature must be > 0, got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise UserError(f"distillation alpha must be in [0, 1], got {self.alpha}")
        for key in ("dkd_alpha", "dkd_beta", "dkd_warmup_epochs", "dist_beta", "dist_gamma"):
            if not getattr(self, key) >= 0:
                raise UserError(f"{key} must be >= 0, got {getattr(self, key)}")

    def check_task(self, task: str) -> None:
        if task == "multilabel" and self.name not in MULTILABEL_KD_LOSSES:
            raise UserError(f"distillation loss {self.name!r} is for single-label (multiclass) tasks; "
                            f"use kd for a multilabel model (per-label sigmoid targets)")

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                 hard_loss: Loss, *, task: str = "multiclass", epochs_done: float = 0.0) -> torch.Tensor:
        """The whole loss of a batch (hard + soft). ``epochs_done`` (fractional) drives DKD's warm-up."""
        if self.name == "kd":
            return kd_loss(student_logits, teacher_logits, target, temperature=self.temperature, alpha=self.alpha,
                           task=task, hard_loss=hard_loss)
        hard = hard_loss(student_logits.float(), target)
        if self.name == "dkd":
            ramp = 1.0 if self.dkd_warmup_epochs <= 0 else min(1.0, epochs_done / self.dkd_warmup_epochs)
            soft = dkd_loss(student_logits, teacher_logits, class_indices(target), temperature=self.temperature,
                            alpha=self.dkd_alpha, beta=self.dkd_beta)
            return hard + ramp * soft
        return hard + dist_loss(student_logits, teacher_logits, temperature=self.temperature, beta=self.dist_beta,
                                gamma=self.dist_gamma)

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        keep = {"kd": ("name", "temperature", "alpha"),
                "dkd": ("name", "temperature", "dkd_alpha", "dkd_beta", "dkd_warmup_epochs"),
                "dist": ("name", "temperature", "dist_beta", "dist_gamma")}[self.name]
        return {k: d[k] for k in keep}
