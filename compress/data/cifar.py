"""CIFAR-10 / CIFAR-100 through torchvision, for users who have the files or internet access.

The root folder is the ``root`` argument, else ``$COMPRESS_DATA_ROOT``, else ``~/.cache/compress/data``.
Files already there are used as they are; otherwise torchvision tries to download them, and a
failed download is a one-line :class:`UserError`. Split: the official test set is ``test``; 10% of
the official training set (seeded, stratified) is ``val``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .datasets import ArrayDataset, DataBundle, seeded_split
from .preprocess import Preprocess, channel_stats

ROOT_ENV = "COMPRESS_DATA_ROOT"


def data_root(root: str | None = None) -> Path:
    return Path(root or os.environ.get(ROOT_ENV) or Path.home() / ".cache" / "compress" / "data").expanduser()


def _open(cls, root: Path, train: bool, name: str):
    try:
        return cls(str(root), train=train, download=False)
    except RuntimeError:
        pass  # not there yet: try to download
    try:
        root.mkdir(parents=True, exist_ok=True)
        return cls(str(root), train=train, download=True)
    except Exception as e:  # network errors come in many types (URLError, socket errors, ...)
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{name}: not found in {root} and the download failed ({msg[:120]}); "
                        f"put the extracted files there or set {ROOT_ENV}") from None


def load_cifar(name: str, image_size: int = 32, seed: int = 0, mean=None, std=None, root: str | None = None,
               interpolation: str = "bilinear") -> DataBundle:
    from torchvision import datasets

    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    where = data_root(root)
    train_set = _open(cls, where, True, name)
    test_set = _open(cls, where, False, name)
    labels = list(train_set.classes)
    prep = Preprocess(image_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), interpolation)

    def unit(images: np.ndarray) -> np.ndarray:  # (N, 32, 32, 3) uint8 → (N, S, S, 3) in [0, 1]
        if image_size == images.shape[1]:
            return images.astype(np.float32) / np.float32(255.0)
        from PIL import Image
        return np.stack([prep.to_unit(Image.fromarray(im)) for im in images])

    train_targets = np.asarray(train_set.targets, dtype=np.int64)
    tr, va, _ = seeded_split(len(train_targets), (0.9, 0.1, 0.0), seed, strata=train_targets)
    train_unit = unit(train_set.data)
    if mean is None or std is None:
        m, sd = channel_stats(train_unit[tr])
        mean = m if mean is None else mean
        std = sd if std is None else std
    prep = prep.with_stats(mean, std)
    x = torch.from_numpy(prep.normalise_unit(train_unit))
    y = torch.from_numpy(train_targets)
    test_x = torch.from_numpy(prep.normalise_unit(unit(test_set.data)))
    test_y = torch.as_tensor(np.asarray(test_set.targets, dtype=np.int64))
    return DataBundle(name=name, train=ArrayDataset(x[tr], y[tr]), val=ArrayDataset(x[va], y[va]),
                      test=ArrayDataset(test_x, test_y), labels=labels, task="multiclass",
                      input_size=(3, image_size, image_size), mean=prep.mean, std=prep.std, preprocess=prep,
                      info={"source": f"torchvision {name} at {where}", "split_seed": seed})
