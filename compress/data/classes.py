"""A class subset of a data set (``SPEC:classes=0-4``, parsed by :mod:`.spec`): every split keeps
only the images of the listed classes, relabelled 0..k-1 in the order given, with their names.

    fashion-mnist:classes=0-4       T-shirt/top, Trouser, Pullover, Dress, Coat
    digits:classes=0+2+4+6+8        even digits (``+`` joins items: a comma separates spec options)
    fashion-mnist:classes=5-9+0     Sandal ... Ankle boot, then T-shirt/top as class 5

The use: train a backbone on some classes and keep the others unseen, for few-shot evaluation
(``compress fewshot``). The normalisation statistics stay those of the full training split (the
preprocessing is a property of the data set, not of the view). The whole spec is what an artifact
records, so later stages load the same view. Applied before ``imbalance=`` (which then thins the
upper half of the kept classes).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UserError


def parse_classes(text: str) -> list[int]:
    """``"0-4"`` → [0, 1, 2, 3, 4]; ``"5-9+0"`` → [5, 6, 7, 8, 9, 0]. Non-negative class indices,
    ranges inclusive, each class at most once."""
    out: list[int] = []
    for item in str(text).split("+"):
        item = item.strip()
        lo, dash, hi = item.partition("-")
        try:
            values = list(range(int(lo), int(hi) + 1)) if dash else [int(item)]
        except ValueError:
            raise UserError(f"data spec option classes={text!r}: {item!r} is not a class index or a range "
                            f"like 0-4 (join several with +, e.g. classes=0-2+7)") from None
        if dash and int(hi) < int(lo):
            raise UserError(f"data spec option classes={text!r}: empty range {item!r}")
        if any(v < 0 for v in values):
            raise UserError(f"data spec option classes={text!r}: class indices must be >= 0")
        out += values
    dup = sorted({v for v in out if out.count(v) > 1})
    if dup:
        raise UserError(f"data spec option classes={text!r} names class {dup[0]} twice")
    return out


class RelabeledSubset(Dataset):
    """The samples ``indices`` of ``base`` with class targets mapped through ``mapping``."""

    def __init__(self, base: Dataset, indices: Sequence[int], mapping: dict[int, int]):
        self.indices = [int(i) for i in indices]
        self.base_dataset = base
        self.mapping = dict(mapping)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        x, y = self.base_dataset[self.indices[i]]
        return x, self.mapping[int(y)]


def select_classes(dataset: Dataset, classes: Sequence[int]) -> Dataset:
    """The samples of ``dataset`` whose class is in ``classes``, relabelled to its position."""
    from .imbalance import class_targets

    mapping = {c: k for k, c in enumerate(classes)}
    if not len(dataset):
        return dataset
    targets = class_targets(dataset)
    idx = np.flatnonzero(np.isin(targets, list(classes)))
    if hasattr(dataset, "images") and hasattr(dataset, "targets"):  # ArrayDataset: stay in memory
        from .datasets import ArrayDataset
        from .loading import take

        kept = take(dataset, idx)
        lookup = torch.full((int(max(classes)) + 1,), -1, dtype=torch.int64)
        lookup[list(classes)] = torch.arange(len(classes))
        return ArrayDataset(kept.images, lookup[kept.targets])
    return RelabeledSubset(dataset, idx, mapping)


def apply_classes(bundle: Any, classes: Sequence[int]) -> None:
    """Keep only ``classes`` in every split of ``bundle`` (in place; see the module docstring) and
    record the view in ``bundle.info["classes"]``."""
    if bundle.task != "multiclass":
        raise UserError(f"data spec option classes needs a single-label data set; {bundle.name!r} is {bundle.task}")
    k = bundle.num_classes
    bad = [c for c in classes if c >= k]
    if bad:
        raise UserError(f"data spec option classes: {bundle.name!r} has classes 0-{k - 1}, not {bad[0]}")
    if len(classes) < 2:
        raise UserError("data spec option classes needs at least 2 classes")
    for split in ("train", "val", "test"):
        setattr(bundle, split, select_classes(getattr(bundle, split), classes))
    original = list(bundle.labels)
    bundle.labels = [original[c] for c in classes]
    bundle.info["classes"] = {"indices": list(classes), "of": original}
