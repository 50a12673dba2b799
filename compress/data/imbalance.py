"""The class-imbalanced view of a data set (``SPEC:imbalance=R``, parsed by :mod:`.spec`), and
the class targets and counts of a split without loading its images.

The whole spec (with its options) is what an artifact records, so every later stage (prune,
distill, quantize, eval) loads the same view.

``imbalance=R`` (0 < R <= 1) keeps a fraction R of the images of the upper half of the classes
(class indices ``K // 2`` .. ``K - 1``; for Fashion-MNIST: Sandal, Shirt, Sneaker, Bag, Ankle boot)
in the training split and, at the same ratio, in the validation split, so model selection sees the
distribution training sees. The test split is untouched: it measures what the imbalance cost.
Which images stay is seeded by the split seed (``--data-seed``) and is the same on every run;
every reduced class keeps at least one image. The normalisation statistics are those of the full
training split.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UserError


def class_targets(dataset: Dataset) -> np.ndarray:
    """The targets of every sample without loading images where the dataset allows it: (N,)
    int64 class indices (multiclass) or an (N, K) 0/1 matrix (multilabel)."""
    from .datasets import ArrayDataset, FileDataset, IndexSubset

    if isinstance(dataset, ArrayDataset):
        return dataset.targets.numpy()
    if isinstance(dataset, IndexSubset):
        return class_targets(dataset.base)[np.asarray(dataset.indices, dtype=np.int64)]
    if isinstance(dataset, FileDataset):
        if not dataset.multilabel:
            return np.asarray(dataset.raw_targets, dtype=np.int64)
        return np.stack([dataset.target(i).numpy() for i in range(len(dataset))]) if len(dataset) else \
            np.zeros((0, dataset.num_classes), dtype=np.float32)
    base = getattr(dataset, "base", None)  # wrappers that keep the base's order (cached teacher logits)
    if base is not None and len(base) == len(dataset):
        return class_targets(base)
    return np.stack([np.asarray(torch.as_tensor(dataset[i][1])) for i in range(len(dataset))])


def class_counts(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """Samples per class (multiclass) or positives per label (multilabel), as int64 (K,)."""
    if targets.ndim == 1:
        return np.bincount(targets.astype(np.int64), minlength=num_classes)[:num_classes]
    return (targets > 0.5).sum(axis=0).astype(np.int64)


def reduced_classes(num_classes: int) -> list[int]:
    """The classes an imbalanced view thins out: the upper half of the indices."""
    return list(range(num_classes // 2, num_classes))


def imbalanced_indices(targets: np.ndarray, num_classes: int, ratio: float, seed: int) -> np.ndarray:
    """Sorted indices of the samples an imbalanced view keeps: every sample of the lower half of
    the classes and ``max(1, round(ratio * n))`` of the ``n`` samples of each class of the upper
    half, drawn with ``seed`` (the same draw for the same targets and seed)."""
    targets = np.asarray(targets, dtype=np.int64)
    keep = [np.flatnonzero(targets < num_classes // 2)]
    rng = np.random.default_rng([seed, 0x1b1a])  # its own stream: independent of the split's shuffle
    for c in reduced_classes(num_classes):
        members = np.flatnonzero(targets == c)
        if len(members):
            n = max(1, int(round(ratio * len(members))))
            keep.append(rng.permutation(members)[:n])
    return np.sort(np.concatenate(keep)).astype(np.int64)


def apply_imbalance(bundle: Any, ratio: float, seed: int) -> None:
    """Thin ``bundle``'s train and val splits in place (see the module docstring) and record the
    view in ``bundle.info["imbalance"]``."""
    from .loading import take

    if bundle.task != "multiclass":
        raise UserError(f"data spec option imbalance needs a single-label data set; {bundle.name!r} is "
                        f"{bundle.task}")
    k = bundle.num_classes
    counts = {}
    for split in ("train", "val"):
        data = getattr(bundle, split)
        if ratio < 1 and len(data):
            targets = class_targets(data)
            data = take(data, imbalanced_indices(targets, k, ratio, seed))
            setattr(bundle, split, data)
        counts[split] = class_counts(class_targets(data), k).tolist() if len(data) else [0] * k
    bundle.info["imbalance"] = {"ratio": ratio, "reduced_classes": [bundle.labels[c] for c in reduced_classes(k)],
                                "class_counts": counts}
