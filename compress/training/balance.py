"""Class imbalance: what ``--balance`` (:data:`~.config.BALANCE_MODES`) changes in the loop.

``oversample``   each epoch draws ``len(train)`` samples with replacement, sample ``i`` with
                 probability proportional to ``1 / count[class of i]``: every class is drawn
                 about equally often; the epoch keeps its length.
``undersample``  each epoch draws ``min(count)`` samples of every class without replacement
                 (a fresh draw per epoch), shuffled together: ``K * min(count)`` samples.
``class-weights`` the label loss weights class ``c`` by ``w_c = N / (K * count_c)`` (inverse
                 frequency with mean 1 over the ``N`` training samples, :func:`class_weights`); the
                 batch loss is the plain mean of the per-sample losses, each weighted by its label's
                 class (label smoothing keeps that weight). Multilabel: BCE ``pos_weight = negatives /
                 positives`` per label (:func:`positive_weights`).

Sampling needs one class per sample, so multilabel data take only ``none`` and ``class-weights``.
The draws depend only on the seed and the epoch, so a run is reproducible, and under torchrun
every process draws the same epoch and takes its own shard of it.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from ..errors import UserError

SAMPLING_MODES = ("oversample", "undersample")


def check_balance(mode: str, task: str) -> None:
    """A :class:`UserError` when ``mode`` cannot apply to ``task``."""
    if mode in SAMPLING_MODES and task != "multiclass":
        raise UserError(f"--balance {mode} needs one class per sample; for a {task} data set use "
                        f"--balance class-weights (BCE pos_weight) or none")


def class_weights(counts: np.ndarray) -> np.ndarray:
    """Inverse-frequency weights ``w_c = N / (K * n_c)`` over the ``K`` classes present (``N``
    samples): scikit-learn's "balanced". Their mean over the training samples is 1, so the loss
    (and the effective learning rate) keeps its scale while each class contributes equally.
    Absent classes get weight 1: they never occur as a label, only smoothing or mixing gives
    them mass."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    if not present.any():
        raise UserError("--balance class-weights: the training split has no labels")
    w = np.ones_like(counts)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return w


def positive_weights(positives: np.ndarray, n: int) -> np.ndarray:
    """BCE ``pos_weight`` per label: negatives / positives (1 for a label that is never positive)."""
    positives = np.asarray(positives, dtype=np.float64)
    return np.where(positives > 0, (n - positives) / np.maximum(positives, 1), 1.0)


class BalancedSampler(Sampler[int]):
    """Indices for one epoch of ``oversample`` or ``undersample`` over ``targets`` (class per
    sample). The epoch's draw is seeded by ``(seed, epoch)``: :meth:`set_epoch` sets the epoch,
    else each iteration advances it by one. With ``world > 1`` the process ``rank`` takes every
    ``world``-th index of the common draw (padded to a multiple of ``world``, like
    ``DistributedSampler``)."""

    def __init__(self, targets: np.ndarray, mode: str, *, seed: int = 0, rank: int = 0, world: int = 1):
        if mode not in SAMPLING_MODES:
            raise ValueError(f"mode must be one of {SAMPLING_MODES}, got {mode!r}")
        self.targets = np.asarray(targets, dtype=np.int64)
        if self.targets.ndim != 1 or not len(self.targets):
            raise UserError(f"--balance {mode} needs a non-empty single-label training split")
        self.mode, self.seed, self.rank, self.world = mode, seed, rank, world
        self.epoch, self._epoch_set = 0, False
        classes, self.counts = np.unique(self.targets, return_counts=True)
        self.members = [np.flatnonzero(self.targets == c) for c in classes]
        self.total = len(self.targets) if mode == "oversample" else len(classes) * int(self.counts.min())

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._epoch_set = epoch, True

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """The whole (unsharded) draw of ``epoch``."""
        rng = np.random.default_rng([self.seed, epoch, 0xba1])
        if self.mode == "oversample":
            weight = 1.0 / np.bincount(self.targets)[self.targets]
            return rng.choice(len(self.targets), size=self.total, replace=True, p=weight / weight.sum())
        per_class = int(self.counts.min())
        picked = np.concatenate([rng.choice(m, size=per_class, replace=False) for m in self.members])
        return rng.permutation(picked)

    def __iter__(self) -> Iterator[int]:
        idx = self.epoch_indices(self.epoch)
        if not self._epoch_set:
            self.epoch += 1
        if self.world > 1:
            idx = np.resize(idx, len(self) * self.world)[self.rank::self.world]
        return iter(idx.tolist())

    def __len__(self) -> int:
        return -(-self.total // self.world)


def epoch_samples(dataset, mode: str) -> int:
    """How many samples one training epoch over ``dataset`` draws under ``--balance mode``."""
    if mode != "undersample":
        return len(dataset)
    from ..data.imbalance import class_targets

    counts = np.unique(class_targets(dataset), return_counts=True)[1]
    return len(counts) * int(counts.min())


def class_weight_tensor(targets: np.ndarray, num_classes: int, task: str) -> torch.Tensor:
    """The loss weights ``--balance class-weights`` gives (float32, K): inverse class frequency for
    multiclass, BCE pos_weight for multilabel."""
    from ..data.imbalance import class_counts

    counts = class_counts(targets, num_classes)
    w = class_weights(counts) if task == "multiclass" else positive_weights(counts, len(targets))
    return torch.tensor(w, dtype=torch.float32)
