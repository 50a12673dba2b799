"""Load a data set by its spec string; seeded subsets; data loaders (see :mod:`compress.data`)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import UserError
from .datasets import ArrayDataset, DataBundle, IndexSubset
from .imbalance import apply_imbalance
from .spec import parse_imbalance, split_spec_options
from .preprocess import INTERPOLATIONS

KNOWN_SPECS = ("digits", "digits-multilabel", "imagefolder:PATH", "csv:PATH", "cifar10", "cifar100",
               "fashion-mnist", "mnist", "kmnist", "idx:PATH")


def load_data(spec: str = "digits", image_size: int = 32, seed: int = 0, *,
              mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
              interpolation: str | None = None, data_root: str | None = None, label_sep: str = ";",
              train_limit: int | None = None) -> DataBundle:
    """Load the data set named by ``spec`` (see the module docstring).

    ``seed`` fixes the train/val/test split (and the multi-label canvases), not the training.
    ``mean``/``std`` override the statistics measured on the training split (evaluation of a model
    uses the values stored in the model). ``train_limit`` keeps a seeded random subset of that
    many training samples (quick experiments, tests), after any ``:imbalance=R`` view of the spec
    (:mod:`.imbalance`). Bad specs raise :class:`UserError`."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"empty data spec; known: {', '.join(KNOWN_SPECS)}")
    if not 8 <= int(image_size) <= 1024:
        raise UserError(f"image size must be between 8 and 1024 pixels, got {image_size}")
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise UserError(f"unknown interpolation {interpolation!r}; choose one of {', '.join(INTERPOLATIONS)}")
    for name, v in (("mean", mean), ("std", std)):
        if v is not None and len(v) not in (1, 3):
            raise UserError(f"{name} needs 1 or 3 values, got {len(v)}")
    if std is not None and min(std) <= 0:
        raise UserError("std values must be > 0")
    spec = spec.strip()
    base_spec, options = split_spec_options(spec)
    imbalance = parse_imbalance(options["imbalance"]) if "imbalance" in options else None
    kind, _, arg = base_spec.partition(":")
    kind = kind.lower()
    stats = {"mean": _triple(mean), "std": _triple(std)}
    if kind in ("digits", "digits-multilabel") and not arg:
        from .digits import load_digits_bundle, load_digits_multilabel_bundle

        if interpolation not in (None, "bilinear"):
            raise UserError(f"{kind} is defined with bilinear resizing; --interpolation {interpolation} is not supported")
        loader = load_digits_bundle if kind == "digits" else load_digits_multilabel_bundle
        bundle = loader(image_size=image_size, seed=seed, **stats)
    elif kind == "imagefolder":
        from .files import load_imagefolder

        bundle = load_imagefolder(arg, image_size, seed, interpolation=interpolation or "bilinear", **stats)
    elif kind == "csv":
        from .files import load_csv

        bundle = load_csv(arg, image_size, seed, interpolation=interpolation or "bilinear", label_sep=label_sep,
                          **stats)
    elif kind in ("cifar10", "cifar100") and not arg:
        from .cifar import load_cifar

        bundle = load_cifar(kind, image_size, seed, root=data_root, interpolation=interpolation or "bilinear",
                            **stats)
    elif (kind in ("fashion-mnist", "mnist", "kmnist") and not arg) or kind == "idx":
        from .idx import load_idx_dataset

        bundle = load_idx_dataset(f"idx:{arg}" if kind == "idx" else kind, image_size, seed, root=data_root,
                                  interpolation=interpolation or "bilinear", **stats)
    else:
        raise UserError(f"unknown data set {spec!r}; known: {', '.join(KNOWN_SPECS)} (each optionally followed "
                        f"by :imbalance=R)")
    if "classes" in options:  # a class subset (compress/data/classes.py), before any imbalance of it
        from .classes import apply_classes, parse_classes

        apply_classes(bundle, parse_classes(options["classes"]))
    if imbalance is not None:
        apply_imbalance(bundle, imbalance, seed)
    if train_limit is not None:
        if train_limit < 1:
            raise UserError(f"train limit must be >= 1, got {train_limit}")
        bundle.train = subset(bundle.train, train_limit, seed)
        bundle.info["train_limit"] = train_limit
    return bundle


def _triple(v: Sequence[float] | None):
    if v is None:
        return None
    vals = [float(x) for x in v]
    return tuple(vals * 3 if len(vals) == 1 else vals)


def subset(dataset: Dataset, n: int, seed: int = 0) -> Dataset:
    """A seeded random subset of ``n`` items (the whole set when it is not larger)."""
    if n >= len(dataset):
        return dataset
    return take(dataset, np.sort(np.random.default_rng(seed).permutation(len(dataset))[:n]))


def take(dataset: Dataset, idx: np.ndarray) -> Dataset:
    """The samples ``idx`` of ``dataset`` (an in-memory copy for an :class:`ArrayDataset`)."""
    if isinstance(dataset, ArrayDataset):
        t = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        return ArrayDataset(_take(dataset.images, t), dataset.targets[t])
    return IndexSubset(dataset, idx)


def _take(images: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``images[idx]``; channels that are one channel expanded (grey data sets) stay a view."""
    if images.ndim == 4 and images.shape[1] > 1 and images.stride(1) == 0:
        return images[:, :1][idx].expand(-1, images.shape[1], -1, -1)
    return images[idx]


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = False, *, seed: int = 0,
                num_workers: int = 0, drop_last: bool = False, distributed: bool = False,
                sampler: Sampler | None = None) -> DataLoader:
    """A DataLoader over ``dataset``. Shuffling is seeded (same order for the same seed and epoch).

    With ``distributed=True`` (an initialised ``torch.distributed`` process group) each process
    gets its shard via a ``DistributedSampler``; call ``loader.sampler.set_epoch(e)`` each epoch
    (``compress.train.fit`` does). Evaluation loaders stay whole (the default). A ``sampler`` (e.g.
    :class:`compress.training.balance.BalancedSampler`, which shards itself) replaces both."""
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    if distributed and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise RuntimeError("make_loader(distributed=True) needs an initialised torch.distributed process group")
    kwargs: dict[str, Any] = {"batch_size": batch_size, "num_workers": num_workers, "drop_last": drop_last}
    if sampler is not None:
        kwargs["sampler"] = sampler
    elif distributed:
        from torch.utils.data.distributed import DistributedSampler

        kwargs["sampler"] = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    elif shuffle:
        g = torch.Generator()
        g.manual_seed(seed)
        kwargs.update(shuffle=True, generator=g)
    if num_workers > 0:
        kwargs["persistent_workers"] = True
    return DataLoader(dataset, **kwargs)
