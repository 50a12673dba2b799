"""The embedded data sets: scikit-learn's handwritten digits (1,797 real 8x8 scans, 10 classes,
shipped inside scikit-learn, no download) and a multi-label set built from them.

``digits``: each 8x8 scan (values 0..16) becomes an 8-bit grey PIL image (``round(v * 255 / 16)``)
and goes through :class:`Preprocess` (RGB, resize to ``image_size`` with bilinear interpolation,
[0, 1], normalise). Split: stratified 70/15/15 with a fixed seed.

``digits-multilabel``: a 2x2 canvas (16x16 grey) holding 1-4 digits in random cells; the target
is the set of digit classes present. Canvases of the val/test splits only use scans from the
val/test pools of the single-digit split, so no scan is seen in training and evaluation.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import Image

from .datasets import ArrayDataset, DataBundle, seeded_split
from .preprocess import Preprocess, channel_stats

LABELS = [str(d) for d in range(10)]
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)
INTERPOLATION = "bilinear"
# Canvases per scan in each pool for the multi-label set.
MULTILABEL_CANVASES_PER_SCAN = 2


@functools.lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    """(scans (1797, 8, 8) float64 in 0..16, targets (1797,) int64), read-only, read once per process."""
    from sklearn.datasets import load_digits

    d = load_digits()
    scans, targets = d.images.astype(np.float64), d.target.astype(np.int64)
    scans.flags.writeable = False
    targets.flags.writeable = False
    return scans, targets


def scan_to_image(scan: np.ndarray) -> Image.Image:
    """An 8x8 (or larger) scan with values 0..16 → an 8-bit grey PIL image."""
    return Image.fromarray(np.round(np.clip(scan, 0, 16) * (255.0 / 16.0)).astype(np.uint8), mode="L")


def _unit_stack(images: list[Image.Image], prep: Preprocess) -> np.ndarray:
    """(N, H, W, 3) float32 in [0, 1]: steps 1-3 of the preprocessing for every image."""
    return np.stack([prep.to_unit(im) for im in images])


def _bundle(name: str, split_images: dict[str, list[Image.Image]], split_targets: dict[str, np.ndarray],
            task: str, image_size: int, mean, std, info: dict) -> DataBundle:
    prep = Preprocess(image_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), INTERPOLATION)
    unit = {s: _unit_stack(split_images[s], prep) for s in ("train", "val", "test")}
    if mean is None or std is None:
        m, sd = channel_stats(unit["train"])
        mean = m if mean is None else mean
        std = sd if std is None else std
    prep = prep.with_stats(mean, std)
    datasets = {}
    for s in ("train", "val", "test"):
        x = torch.from_numpy(prep.normalise_unit(unit[s]))
        t = split_targets[s]
        y = torch.from_numpy(t.astype(np.int64) if task == "multiclass" else t.astype(np.float32))
        datasets[s] = ArrayDataset(x, y)
    return DataBundle(name=name, labels=list(LABELS), task=task, input_size=(3, image_size, image_size),
                      mean=prep.mean, std=prep.std, preprocess=prep, info=info, **datasets)


def load_digits_bundle(image_size: int = 32, seed: int = 0, mean=None, std=None) -> DataBundle:
    scans, targets = _raw_digits()
    idx = dict(zip(("train", "val", "test"), seeded_split(len(scans), SPLIT_FRACTIONS, seed, strata=targets)))
    images = {s: [scan_to_image(scans[i]) for i in ix] for s, ix in idx.items()}
    info = {"source": "sklearn.datasets.load_digits (1797 8x8 scans)", "split_seed": seed,
            "split_fractions": list(SPLIT_FRACTIONS)}
    return _bundle("digits", images, {s: targets[ix] for s, ix in idx.items()}, "multiclass",
                   image_size, mean, std, info)


def make_canvases(scans: np.ndarray, targets: np.ndarray, pool: np.ndarray, n: int,
                  rng: np.random.Generator) -> tuple[list[Image.Image], np.ndarray]:
    """``n`` 16x16 canvases with 1-4 scans from ``pool`` in random cells of a 2x2 grid."""
    images, labels = [], np.zeros((n, 10), dtype=np.float32)
    for k in range(n):
        count = int(rng.integers(1, 5))
        cells = rng.choice(4, size=count, replace=False)
        picks = rng.choice(pool, size=count, replace=True)
        canvas = np.zeros((16, 16))
        for cell, i in zip(cells, picks):
            r, c = divmod(int(cell), 2)
            canvas[r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] = scans[i]
            labels[k, targets[i]] = 1.0
        images.append(scan_to_image(canvas))
    return images, labels


def load_digits_multilabel_bundle(image_size: int = 32, seed: int = 0, mean=None, std=None) -> DataBundle:
    scans, targets = _raw_digits()
    idx = dict(zip(("train", "val", "test"), seeded_split(len(scans), SPLIT_FRACTIONS, seed, strata=targets)))
    rng = np.random.default_rng(seed + 1)
    images, labels = {}, {}
    for s in ("train", "val", "test"):
        images[s], labels[s] = make_canvases(scans, targets, idx[s], MULTILABEL_CANVASES_PER_SCAN * len(idx[s]), rng)
    info = {"source": "2x2 canvases of sklearn digits, 1-4 digits each", "split_seed": seed,
            "split_fractions": list(SPLIT_FRACTIONS)}
    return _bundle("digits-multilabel", images, labels, "multilabel", image_size, mean, std, info)
