"""What the training loop minimises, as an object handed to :func:`~compress.training.loop.fit`.

A criterion computes the loss of one batch from the student's logits, the (augmented) inputs and
the targets, and may own extra networks (a teacher) that it prepares before training and gives
back afterwards. Plain training, distillation (and later quantization-aware training) are
criteria, not branches of the loop.

    fit(student, bundle, cfg, criterion=DistillationCriterion(teacher, build_loss("ce", "multiclass")))
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from ..errors import UserError
from .config import TEACHER_CACHE
from .losses import build_loss

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Criterion:
    """The loss of one batch. ``setup`` runs before the optimizer is built (on every process) and
    may add trainable parameters (:meth:`parameters`); ``teardown`` after the last step (also on
    error); ``train_dataset`` may wrap the training set so each batch carries extra per-sample
    data (``aux``: e.g. cached teacher logits); ``at`` tells how far training is (in epochs);
    ``describe`` is recorded in logs and reports."""

    name = "criterion"

    def setup(self, device: torch.device, student: nn.Module | None = None,
              example: torch.Tensor | None = None) -> None:
        pass

    def parameters(self) -> list[nn.Parameter]:
        return []

    def train_dataset(self, dataset: Any, *, augments: bool, batch_size: int, device: torch.device,
                      log: Callable[[str], None] = lambda m: None) -> Any:
        return dataset

    def at(self, epochs_done: float) -> None:
        pass

    def teardown(self) -> None:
        pass

    def weight_classes(self, weights: torch.Tensor) -> None:
        """Weight the label loss per class (``--balance class-weights``; see :mod:`.balance`)."""
        raise UserError(f"--balance class-weights: the {self.name} criterion has no label loss to weight")

    def __call__(self, logits: torch.Tensor, inputs: torch.Tensor, target: torch.Tensor,
                 aux: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


def _set_class_weight(loss: Any, weights: torch.Tensor) -> dict[str, Any]:
    if not hasattr(loss, "class_weight"):
        raise UserError(f"--balance class-weights: the loss {type(loss).__name__} takes no class weights")
    loss.class_weight = weights
    return {"class_weights": [round(float(w), 4) for w in weights]}


class SupervisedCriterion(Criterion):
    """The training loss against the (possibly mixed or smoothed) labels."""

    name = "supervised"

    def __init__(self, loss: Loss):
        self.loss = loss
        self.weights: dict[str, Any] = {}

    def weight_classes(self, weights: torch.Tensor) -> None:
        self.weights = _set_class_weight(self.loss, weights)

    def __call__(self, logits: torch.Tensor, inputs: torch.Tensor, target: torch.Tensor,
                 aux: torch.Tensor | None = None) -> torch.Tensor:
        return self.loss(logits, target)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "loss": type(self.loss).__name__, **self.weights}


class _WithTeacherLogits(Dataset):
    """A training set whose samples carry the teacher's logits as a third element."""

    def __init__(self, base: Any, logits: torch.Tensor):
        self.base, self.logits = base, logits

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i]
        return x, y, self.logits[i]


class DistillationCriterion(Criterion):
    """Knowledge distillation from ``teacher``: the configured training loss (``hard_loss``: label
    smoothing, focal, soft mixup targets keep their meaning) plus a soft term on the logits
    (:class:`~compress.distill.losses.DistillLoss`: Hinton KD, DKD or DIST), plus optionally a
    feature hint (:class:`~compress.distill.hints.FeatureHint`).

    The teacher runs in eval mode under ``no_grad`` on the very batch the student sees, after
    augmentation; with mixup/cutmix that is the mixed image, so the soft term matches the
    teacher's prediction on exactly the student's input ("function matching"). When nothing
    changes the inputs between epochs (no augmentation) and no hint needs its features, the
    teacher's logits are computed once over the training set and cached (``cache="auto"``;
    ``describe()`` says whether they were); with ``cache_file`` they are also kept on disk and read
    back by a later run with the same teacher file and training set. The teacher is moved to the training device, never
    wrapped in DistributedDataParallel (it takes no gradients; each process runs it on its own
    shard), never updated, and given back in its original train/eval mode."""

    name = "distillation"

    def __init__(self, teacher: nn.Module, hard_loss: Loss, *, temperature: float = 4.0, alpha: float = 0.7,
                 task: str = "multiclass", loss: Any = None, hint: Any = None, cache: str = "auto",
                 cache_file: Any = None):
        from ..distill.losses import DistillLoss

        self.spec = loss if loss is not None else DistillLoss("kd", temperature=temperature, alpha=alpha)
        if not isinstance(self.spec, DistillLoss):
            raise UserError(f"loss must be a DistillLoss, got {type(self.spec).__name__}")
        self.spec.check_task(task)
        if cache not in TEACHER_CACHE:
            raise UserError(f"teacher cache must be one of {', '.join(TEACHER_CACHE)}, got {cache!r}")
        self.teacher, self.hard_loss, self.task, self.hint, self.cache = teacher, hard_loss, task, hint, cache
        self.cache_file = cache_file  # logits kept between runs (see compress.distill.teacher.logits_cache_file)
        self.temperature, self.alpha = self.spec.temperature, self.spec.alpha
        self._teacher_was_training = teacher.training
        self._epochs_done = self._epochs_before = 0.0  # across fit calls (AGP runs one per epoch)
        self._cache: tuple[Any, torch.Tensor] | None = None  # (dataset, its teacher logits)
        self.cached: bool | None = None
        self.cache_note = ""
        self.cache_seconds = 0.0
        self.weights: dict[str, Any] = {}

    def weight_classes(self, weights: torch.Tensor) -> None:
        """Weights the label term only; the soft term follows the teacher's distribution."""
        self.weights = _set_class_weight(self.hard_loss, weights)

    def setup(self, device: torch.device, student: nn.Module | None = None,
              example: torch.Tensor | None = None) -> None:
        self._teacher_was_training = self.teacher.training
        self.teacher.to(device).eval()
        if self.hint is not None:
            if student is None or example is None:
                raise UserError("a feature hint needs the student and an example input at setup")
            self.hint.attach(student, self.teacher, example, device)

    def parameters(self) -> list[nn.Parameter]:
        return self.hint.parameters() if self.hint is not None else []

    def train_dataset(self, dataset: Any, *, augments: bool, batch_size: int, device: torch.device,
                      log: Callable[[str], None] = lambda m: None) -> Any:
        why_not = "the inputs are augmented" if augments else \
            "the feature hint needs the teacher's features" if self.hint is not None else ""
        if self.cache == "on" and why_not:
            raise UserError(f"cannot cache the teacher's logits: {why_not}")
        if self.cache == "off" or why_not:
            self.cached, self.cache_note = False, why_not or "turned off"
            return dataset
        if self._cache is None or self._cache[0] is not dataset:  # a later fit call on the same data reuses them
            started = time.time()
            logits = read_cached_logits(self.cache_file, len(dataset))
            source = f"read from {self.cache_file}" if logits is not None else "computed"
            if logits is None:
                logits = teacher_logits(self.teacher, dataset, batch_size, device)
                write_cached_logits(self.cache_file, logits, log)
            self._cache = (dataset, logits)
            self.cached, self.cache_seconds = True, round(time.time() - started, 1)
            self.cache_note = f"{len(dataset)} samples, {source} in {self.cache_seconds} s"
            log(f"teacher logits cached once ({self.cache_note}): no augmentation changes the inputs")
        return _WithTeacherLogits(dataset, self._cache[1])

    def at(self, epochs_done: float) -> None:
        self._epochs_done = self._epochs_before + epochs_done

    def teardown(self) -> None:
        self._epochs_before = self._epochs_done  # a later fit call continues the warm-up
        if self.hint is not None:
            self.hint.detach()
        self.teacher.train(self._teacher_was_training)

    def __call__(self, logits: torch.Tensor, inputs: torch.Tensor, target: torch.Tensor,
                 aux: torch.Tensor | None = None) -> torch.Tensor:
        if aux is not None:
            teacher_out = aux
        else:
            with torch.no_grad():
                teacher_out = self.teacher(inputs)
        if teacher_out.shape != logits.shape:
            raise UserError(f"the teacher has {teacher_out.shape[-1]} outputs but the student has "
                            f"{logits.shape[-1]}; distillation needs the same classes")
        loss = self.spec(logits, teacher_out, target, self.hard_loss, task=self.task, epochs_done=self._epochs_done)
        if self.hint is not None:
            loss = loss + self.hint.loss()
        return loss

    def describe(self) -> dict[str, Any]:
        out = {"name": self.name, "loss": self.spec.name if self.spec.name != "kd" else "hinton_kd",
               **{k: v for k, v in self.spec.describe().items() if k != "name"},
               "teacher": getattr(self.teacher, "arch", type(self.teacher).__name__), **self.weights}
        if self.hint is not None:
            out["hint"] = self.hint.describe()
        if self.cached is not None:
            out["teacher_logits"] = "cached once" if self.cached else f"computed every step ({self.cache_note})"
            if self.cached:
                out["teacher_logits_cache"] = self.cache_note
        return out


def read_cached_logits(path: Any, n: int) -> torch.Tensor | None:
    """Logits cached by an earlier run (a safetensors file), or None when absent or unusable."""
    if path is None:
        return None
    from pathlib import Path

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not Path(path).is_file():
        return None
    try:
        logits = load_file(str(path))["logits"].clone()  # in memory, not a view of a file others may replace
    except (SafetensorError, OSError, KeyError):
        return None
    return logits if logits.ndim == 2 and logits.shape[0] == n else None


def write_cached_logits(path: Any, logits: torch.Tensor, log: Callable[[str], None]) -> None:
    """Keep ``logits`` for later runs; a failure only costs the next run the computation."""
    if path is None:
        return
    from pathlib import Path

    from safetensors.torch import save_file

    from ..io import atomic_path

    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({"logits": logits.contiguous()}, str(tmp))
    except (OSError, UserError) as e:
        log(f"note: could not keep the teacher logits in {path} ({e})")


@torch.no_grad()
def teacher_logits(teacher: nn.Module, dataset: Any, batch_size: int, device: torch.device) -> torch.Tensor:
    """The teacher's float32 logits for every sample of ``dataset``, in order (on the CPU)."""
    from ..data import make_loader

    out = []
    for x, _ in make_loader(dataset, batch_size):
        out.append(teacher(x.to(device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def training_loss(cfg, task: str) -> Loss:
    """The configured hard-label loss of a :class:`~compress.training.config.TrainConfig`."""
    return build_loss(cfg.loss, task, label_smoothing=cfg.label_smoothing, focal_gamma=cfg.focal_gamma)


def build_criterion(cfg, task: str, *, teacher: nn.Module | None = None, temperature: float = 4.0,
                    alpha: float = 0.7, loss: Any = None, hint: Any = None, cache: str = "auto",
                    cache_file: Any = None) -> Criterion:
    """The configured training loss, distilled from ``teacher`` when one is given (``loss``: a
    :class:`~compress.distill.losses.DistillLoss`, default Hinton KD at ``temperature``/``alpha``)."""
    hard = training_loss(cfg, task)
    if teacher is None:
        return SupervisedCriterion(hard)
    return DistillationCriterion(teacher, hard, temperature=temperature, alpha=alpha, task=task, loss=loss,
                                 hint=hint, cache=cache, cache_file=cache_file)
