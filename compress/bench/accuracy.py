"""Accuracy of bench variants on a data set's test split, and their agreement with the baseline.

Every variant sees the same images, preprocessed as its own metadata says (input size,
mean/std); ONNX and PyTorch variants alike are run through their runner's ``predict``."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .variants import Variant


def predict_all(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int = 64) -> np.ndarray:
    """Logits for ``images`` (N, C, H, W) in batches of ``batch``."""
    return np.concatenate([predict(images[i:i + batch]) for i in range(0, len(images), batch)])


def decisions(logits: np.ndarray, task: str) -> np.ndarray:
    """Top-1 class (multiclass) or the set of labels with probability >= 0.5, i.e. logit >= 0
    (multilabel; the rule of ``compress eval`` and the service)."""
    return logits.argmax(1) if task == "multiclass" else (logits >= 0)


def accuracy(logits: np.ndarray, targets: np.ndarray, task: str) -> float:
    """Top-1 (multiclass) or micro-F1 at probability 0.5 (multilabel)."""
    if task == "multiclass":
        return float((logits.argmax(1) == targets).mean())
    pred, truth = logits >= 0, targets > 0.5
    tp = float((pred & truth).sum())
    denom = float(pred.sum() + truth.sum())
    return 2 * tp / denom if denom else 1.0


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of samples on which two models make the same decision (same top-1 class, or the
    same predicted label set)."""
    if a.ndim == 1:
        return float((a == b).mean())
    return float((a == b).all(axis=1).mean())


def _test_arrays(spec: str, side: int, meta, seed: int, limit: int | None):
    """(bundle, images (N, C, H, W) float32, targets) of the test split (val when there is none)."""
    from ..data import load_data

    kw = {"mean": meta.mean, "std": meta.std} if meta is not None else {}
    bundle = load_data(spec, image_size=side, seed=seed, **kw)
    split = bundle.test if len(bundle.test) else bundle.val
    return (bundle, *split_arrays(split, limit))


def split_arrays(split, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, C, H, W) float32, targets) of the first ``limit`` samples of a data split (all
    of them by default)."""
    n = len(split) if limit is None else min(limit, len(split))
    xs, ys = zip(*(split[i] for i in range(n)))
    return np.stack([np.asarray(x, dtype=np.float32) for x in xs]), np.stack([np.asarray(y) for y in ys])


def data_metrics(variants: list[Variant], spec: str, limit: int | None, seed: int, runners: dict[str, Any],
                 input_size: int | None = None) -> dict[str, dict[str, Any]]:
    """Per variant name: ``accuracy`` on the test split of ``spec`` at the variant's training
    resolution (``input_size`` only for models without metadata), ``metric``, ``samples`` and
    ``agreement`` with the first variant (``None`` for the first itself only when it failed)."""
    arrays: dict[tuple, Any] = {}
    out: dict[str, dict[str, Any]] = {}
    chosen: dict[str, np.ndarray] = {}
    for v in variants:
        meta = v.meta
        side = int(meta.input_size[-1]) if meta is not None else v.timing_size(input_size)[-1]
        key = (side, tuple(meta.mean) if meta else None, tuple(meta.std) if meta else None)
        if key not in arrays:
            arrays[key] = _test_arrays(spec, side, meta, seed, limit)
        bundle, images, targets = arrays[key]
        task = meta.task if meta is not None else bundle.task
        logits = predict_all(runners[v.name].predict, images)
        if logits.shape[1] != len(bundle.labels):
            out[v.name] = {"accuracy": None, "agreement": None, "samples": len(images),
                           "note": f"{logits.shape[1]} outputs vs {len(bundle.labels)} classes in {spec}"}
            continue
        chosen[v.name] = decisions(logits, task)
        base = chosen.get(variants[0].name)
        out[v.name] = {"accuracy": accuracy(logits, targets, task),
                       "metric": "top1" if task == "multiclass" else "f1_micro", "samples": int(len(images)),
                       "agreement": agreement(chosen[v.name], base) if base is not None else None}
    return out
