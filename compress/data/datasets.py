"""Dataset containers shared by every source, and the :class:`DataBundle` handed to training."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import UserError
from .preprocess import Preprocess, to_rgb

TASKS = ("multiclass", "multilabel")


class ArrayDataset(Dataset):
    """Samples already preprocessed and held in memory: ``images`` (N, 3, H, W) float32,
    ``targets`` (N,) int64 for multiclass or (N, K) float32 0/1 for multilabel."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor):
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = images
        self.targets = targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        t = self.targets[i]
        return self.images[i], (int(t) if t.ndim == 0 else t)


class FileDataset(Dataset):
    """Images read from disk on access and passed through ``preprocess``.

    ``targets`` holds an int class per image (multiclass) or a list of class indices
    (multilabel, turned into a 0/1 float vector of ``num_classes``)."""

    def __init__(self, paths: Sequence[Path], targets: Sequence[Any], preprocess: Preprocess,
                 num_classes: int, multilabel: bool = False):
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} targets")
        self.paths = [Path(p) for p in paths]
        self.raw_targets = list(targets)
        self.preprocess = preprocess
        self.num_classes = num_classes
        self.multilabel = multilabel

    def __len__(self) -> int:
        return len(self.paths)

    def load_image(self, i: int) -> Image.Image:
        """The image as 8-bit RGB, the way the service sees it (:func:`~.preprocess.to_rgb`: EXIF
        orientation, alpha over white, 16-bit grey scaled), not Pillow's plain ``convert``."""
        path = self.paths[i]
        try:
            with Image.open(path) as im:
                im.load()
                return to_rgb(im)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read image {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None

    def target(self, i: int):
        t = self.raw_targets[i]
        if self.multilabel:
            vec = torch.zeros(self.num_classes, dtype=torch.float32)
            vec[list(t)] = 1.0
            return vec
        return int(t)

    def __getitem__(self, i: int):
        return torch.from_numpy(self.preprocess(self.load_image(i))), self.target(i)


class IndexSubset(Dataset):
    """A fixed subset of another dataset (keeps a reference to the base)."""

    def __init__(self, base: Dataset, indices: Sequence[int]):
        self.base = base
        self.indices = [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.base[self.indices[i]]


@dataclass
class DataBundle:
    """Train/val/test splits of one data set and the facts needed to use a model trained on it.

    Samples are ``(float32 tensor (3, H, W) normalised with mean/std, target)`` where target is an
    int (multiclass) or a float 0/1 vector of len(labels) (multilabel). ``preprocess`` turns one
    PIL image into such a tensor's array (numpy + Pillow only; the serving side mirrors it)."""

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    labels: list[str]
    task: str
    input_size: tuple[int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    preprocess: Preprocess
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def interpolation(self) -> str:
        return self.preprocess.interpolation

    def split(self, name: str) -> Dataset:
        if name not in ("train", "val", "test"):
            raise UserError(f"unknown split {name!r}; choose train, val or test")
        return getattr(self, name)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly facts: sizes, task, labels, preprocessing."""
        return {"name": self.name, "task": self.task, "num_classes": self.num_classes, "labels": self.labels,
                "sizes": {s: len(getattr(self, s)) for s in ("train", "val", "test")},
                "preprocess": self.preprocess.to_dict(), **self.info}


def seeded_split(n: int, fractions: tuple[float, float, float], seed: int,
                 strata: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of a train/val/test split of ``n`` items; stratified by ``strata`` when given.

    Each stratum is shuffled with ``seed`` and cut at the cumulative fractions, so every class
    appears in every split in proportion (when it has enough items)."""
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if strata is None else [np.flatnonzero(np.asarray(strata) == s)
                                                     for s in np.unique(strata)]
    parts: list[list[np.ndarray]] = [[], [], []]
    f_train, f_val, _ = fractions
    for g in groups:
        g = rng.permutation(g)
        n_train = int(round(len(g) * f_train))
        n_val = int(round(len(g) * f_val))
        if len(g) >= 3:
            n_train = min(max(n_train, 1), len(g) - 2)
            n_val = max(n_val, 1)
        parts[0].append(g[:n_train])
        parts[1].append(g[n_train:n_train + n_val])
        parts[2].append(g[n_train + n_val:])
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) for p in parts)  # type: ignore[return-value]
