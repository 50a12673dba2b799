"""Every option of distillation, in one place (torch-free).

:class:`KDOptions` are the loss options shared by every stage that distils: ``compress distill``
and the fine-tuning of stages that derive a model from a parent (prune now; QAT and k-means
fine-tuning later), where distillation from the parent is on by default (``--no-distill``).
:class:`DistillConfig` is ``compress distill``: a teacher, a student (an artifact, or an
architecture trained from scratch), and every knob of the training loop.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from ..config import StageConfig, option
from ..errors import UserError
from ..training.api import TrainStageConfig, parse_json_object
from ..training.config import TEACHER_CACHE, balance_option

KD_LOSSES = ("kd", "dkd", "dist")  # compress.distill.losses.KD_LOSSES, kept torch-free here
KD_LOSS_CHOICES = ("auto", *KD_LOSSES)
_K = "distillation"
_non_negative = (lambda v: v >= 0, "must be >= 0")

# What "auto" means for a single-label model, measured on Fashion-MNIST (README, issue 11):
# - a new student from a stronger teacher (scripts/bench_distill.sh: PP-LCNet x0.25 from a
#   ResNet-18, 6 epochs, 3 seeds): DIST +0.78 points over plain training (every seed above every
#   plain seed), DKD +0.46 (within its spread), Hinton KD -0.09;
# - fine-tuning a model derived from its teacher (prune 0.5 of the MobileNetV2 + 5 epochs):
#   Hinton KD -0.13 points from the unpruned model, labels alone -0.40, DIST -0.93.
# Multilabel models always get kd (per-label sigmoids).
AUTO_KD_LOSS_NEW_STUDENT = "dist"
AUTO_KD_LOSS_FINETUNE = "kd"


@dataclass(kw_only=True)
class KDOptions(StageConfig):
    """The distillation loss and its weights (sources: :mod:`compress.distill.losses`)."""

    kd_loss: str = option("auto", choices=KD_LOSS_CHOICES, parse=str.lower, group=_K,
                          help=f"kd: Hinton et al. 2015; dkd: decoupled KD (Zhao et al. 2022); dist: Pearson-"
                               f"correlation KD (Huang et al. 2022); auto: {AUTO_KD_LOSS_FINETUNE} when fine-"
                               f"tuning a trained model (prune, distill --student), {AUTO_KD_LOSS_NEW_STUDENT} "
                               f"for a new student (distill --student-arch), kd for multilabel models (the "
                               f"measurements: README, Distillation)")
    kd_temperature: float = option(4.0, check=(lambda v: v > 0, "must be > 0"), group=_K,
                                   help="softmax temperature T of every loss (the soft terms are scaled by T^2)")
    kd_alpha: float = option(0.7, check=(lambda v: 0 <= v <= 1, "must be in [0, 1]"), group=_K,
                             help="kd: weight of the soft term, 1 - alpha on the labels (dkd and dist add their "
                                  "term to the full label loss, as in their papers)")
    dkd_alpha: float = option(1.0, check=_non_negative, group=_K, help="dkd: weight of target-class KD (TCKD)")
    dkd_beta: float = option(8.0, check=_non_negative, group=_K,
                             help="dkd: weight of non-target-class KD (NCKD; 8 = the paper's CIFAR-100 value)")
    dkd_warmup_epochs: float = option(1.0, check=_non_negative, group=_K,
                                      help="dkd: epochs over which its term ramps in linearly")
    dist_beta: float = option(2.0, check=_non_negative, group=_K, help="dist: weight of the inter-class relation")
    dist_gamma: float = option(2.0, check=_non_negative, group=_K, help="dist: weight of the intra-class relation")
    # Not a distillation knob, but every stage that fine-tunes (prune, quantize's QAT and k-means
    # fine-tuning, distill) shares these options and hands it to the loop's TrainConfig (the
    # train stage has it from TrainConfig itself).
    balance: str = balance_option("fine-tuning")

    def loss_name(self, task: str = "multiclass", *, finetune: bool = True) -> str:
        """The loss ``kd_loss`` means (``auto`` resolved) for a ``task`` model that is fine-tuned
        from trained weights (``finetune``) or trained from scratch."""
        if self.kd_loss != "auto":
            return self.kd_loss
        if task != "multiclass":
            return "kd"
        return AUTO_KD_LOSS_FINETUNE if finetune else AUTO_KD_LOSS_NEW_STUDENT

    def distill_loss(self, task: str = "multiclass", *, finetune: bool = True):
        """The :class:`~compress.distill.losses.DistillLoss` these options describe (see :meth:`loss_name`)."""
        from .losses import DistillLoss

        return DistillLoss(self.loss_name(task, finetune=finetune), temperature=self.kd_temperature, alpha=self.kd_alpha,
                           dkd_alpha=self.dkd_alpha, dkd_beta=self.dkd_beta, dkd_warmup_epochs=self.dkd_warmup_epochs,
                           dist_beta=self.dist_beta, dist_gamma=self.dist_gamma)

    def kd_params(self, task: str = "multiclass", *, finetune: bool = True) -> dict[str, Any]:
        """The loss options that matter for the loss used, for reports and history entries."""
        name = self.loss_name(task, finetune=finetune)
        keys = {"kd": ("kd_temperature", "kd_alpha"), "dkd": ("kd_temperature", "dkd_alpha", "dkd_beta",
                                                              "dkd_warmup_epochs"),
                "dist": ("kd_temperature", "dist_beta", "dist_gamma")}[name]
        return {"loss": name, **{k: getattr(self, k) for k in keys}}


_S, _H = "teacher and student", "feature hint"

# Fine-tuning a trained student (an artifact) starts from good weights: a lower rate, no warm-up
# (the prune stage's values), under any option given and over the data set's preset.
FINETUNE_DEFAULTS = {"lr": 0.01, "warmup_epochs": 0.0, "epochs": 5}


@dataclass(kw_only=True)
class DistillConfig(KDOptions, TrainStageConfig):
    """``compress distill``: the training loop's options (inherited from the train stage, with the
    data set's preset), the student's architecture when it is trained from scratch, the teacher,
    the loss and the optional feature hint."""

    teacher: str | None = option(None, group=_S, help="the teacher model artifact (.safetensors)")
    student: str | None = option(None, group=_S,
                                 help="the student model artifact to fine-tune (e.g. a pruned model); or give "
                                      "--student-arch")
    model: str | None = option(None, flag="--student-arch", group=_S,
                               help="train a new student of this registry architecture (see `compress models`)")
    model_kwargs: dict[str, Any] | None = option(None, flag="--student-kw", parse=parse_json_object, metavar="JSON",
                                                 group=_S, help='the new student\'s builder keywords, e.g. '
                                                                '\'{"width_mult": 0.5}\'')
    init: str | None = option(None, group=_S, help=argparse.SUPPRESS)  # the train stage's; distill has --student
    data: str | None = option(None, group=_S, help="data spec (default: the one the student, else the teacher, "
                                                   "was trained on)")
    image_size: int | None = option(None, check=(lambda v: 8 <= v <= 1024, "must be between 8 and 1024"),
                                    group=_S, help="input side of a new student (default: the data set's preset, "
                                                   "else the teacher's input size)")
    cache_teacher: str = option("auto", choices=TEACHER_CACHE, group=_K,
                                help="compute the teacher's logits once for the whole training set: auto = when "
                                     "no augmentation changes the inputs and no hint needs its features")
    hint_weight: float = option(0.0, check=_non_negative, group=_H,
                                help="weight of a FitNets feature hint (MSE through a learned 1x1 adapter when "
                                     "the widths differ), 0 = off")
    hint_layer: str = option("forward_features", group=_H,
                             help="student layer of the hint: forward_features (the last feature map) or a "
                                  "module name")
    teacher_hint_layer: str = option("forward_features", group=_H, help="teacher layer of the hint")
    balance: str = balance_option("training")  # KDOptions' field, shown with the loop's options

    def check(self) -> None:
        super().check()
        if self.init:
            raise UserError("distill starts from --student MODEL (--init is compress train's)")
        if not self.teacher:
            raise UserError("--teacher is required (a model artifact)")
        if bool(self.student) == bool(self.model):
            raise UserError("give exactly one of --student (an artifact to fine-tune) and --student-arch "
                            "(a new network)")
        if self.student and self.model_kwargs:
            raise UserError("--student-kw builds a new student; it does not apply to --student")

    @classmethod
    def with_preset(cls, given: Mapping[str, Any], *, where: str = "") -> "DistillConfig":
        cfg = super().with_preset(given, where=where)
        cfg.given = frozenset(given)
        return cfg

    def __post_init__(self) -> None:
        super().__post_init__()
        self.given: frozenset[str] | None = None  # the options set explicitly (from flags or YAML)

    def is_given(self, name: str) -> bool:
        """Whether option ``name`` was set explicitly (for a config built directly: set to a value
        other than its default)."""
        if self.given is not None:
            return name in self.given
        f = next(f for f in dataclasses.fields(self) if f.name == name)
        return getattr(self, name) != _default(f)

    def resolved(self, data: str, *, finetune: bool, augmentation: Mapping[str, Any] | None = None,
                 image_size: int | None = None) -> "DistillConfig":
        """This config once the data set is known: its preset, the fine-tuning defaults for a trained
        student (and that student's training augmentation), the image size; only under options
        not given explicitly (all of them count as given when the config was built directly)."""
        from ..training.presets import preset_for

        given = {f.name for f in dataclasses.fields(self) if self.is_given(f.name)}
        values: dict[str, Any] = dict(preset_for(data, self.preset)) if self.given is not None else {}
        if finetune:
            values.update(FINETUNE_DEFAULTS)
            values.update(augmentation or {})
            values.pop("image_size", None)
        values = {k: v for k, v in values.items() if k not in given}
        if image_size is not None and "image_size" not in given and "image_size" not in values:
            values["image_size"] = image_size
        new = dataclasses.replace(self, data=data, **values)
        new.given, new.preset_applied = self.given, values
        return new.validate()


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None
