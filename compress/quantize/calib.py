"""The images INT8 quantization sees: calibration images from the training split, held-out
validation images that score each candidate's agreement with the fp32 model, and the test split
for the report — all preprocessed by the data module's transform, which is the serving
transform (``serve/images.py`` mirrors :mod:`compress.data.preprocess`; tests compare them, and
``tests/test_quantize.py`` compares these arrays with the service's own preprocessing).

    data = quantization_data(meta, "fashion-mnist", calib_samples=256, eval_samples=2000)
    reader = ArrayReader("input", data.calib)   # an onnxruntime CalibrationDataReader
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from ..errors import UserError


@dataclass
class QuantData:
    """Preprocessed float32 (N, C, H, W) arrays and where they came from."""

    calib: np.ndarray
    eval: np.ndarray
    test: np.ndarray | None = None
    test_targets: np.ndarray | None = None
    task: str = "multiclass"
    source: dict[str, Any] = field(default_factory=dict)


def _stack(dataset, indices) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for i in indices:
        x, y = dataset[int(i)]
        xs.append(np.asarray(x, dtype=np.float32))
        ys.append(np.asarray(y))
    if not xs:
        return np.zeros((0,), np.float32), np.zeros((0,))
    return np.stack(xs), np.stack(ys)


def _sample(n_total: int, n: int, seed: int) -> np.ndarray:
    """``n`` seeded indices of ``range(n_total)`` (all of them, in order, when ``n >= n_total``)."""
    if n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, size=n, replace=False))


def quantization_data(meta, spec: str | None, *, calib_samples: int, eval_samples: int, seed: int | None = None,
                      data_root: str | None = None, test: bool = True, sample_seed: int = 0) -> QuantData:
    """Calibration images (a seeded sample of the training split), agreement images (the first
    ``eval_samples`` of the validation split, else of the test split) and, with ``test``, the test
    split with its targets, for ``meta``'s model from data set ``spec`` (default: the one in its
    history). Raises :class:`UserError` when there is no data set or it does not fit the model."""
    from ..data import load_data_for_model

    if meta is None:
        raise UserError("the ONNX model has no compress metadata (no preprocessing, labels or data set); "
                        "quantize its .safetensors artifact, or re-export it with `compress export`")
    bundle = load_data_for_model(meta, spec, seed=seed, data_root=data_root, source="the model",
                                 why="images to calibrate INT8 with (--calib)")
    if len(bundle.train) == 0:
        raise UserError(f"data set {bundle.name!r} has no training images to calibrate with")
    calib, _ = _stack(bundle.train, _sample(len(bundle.train), calib_samples, sample_seed))
    held_out, held_name = (bundle.val, "val") if len(bundle.val) else (bundle.test, "test")
    if len(held_out) == 0:
        raise UserError(f"data set {bundle.name!r} has no validation or test images to score agreement on")
    evals, _ = _stack(held_out, range(min(eval_samples, len(held_out))))
    data = QuantData(calib=calib, eval=evals, task=bundle.task,
                     source={"data": bundle.name, "calib": f"{len(calib)} train images (seeded sample)",
                             "agreement": f"first {len(evals)} {held_name} images"})
    if test and len(bundle.test):
        data.test, data.test_targets = _stack(bundle.test, range(len(bundle.test)))
        data.source["test"] = f"{len(data.test)} test images"
    return data


class ArrayReader:
    """An ONNX Runtime ``CalibrationDataReader`` over a preprocessed array, ``batch`` images per
    call. ``rewind()`` starts again (ONNX Runtime's calibrators read it once each)."""

    def __init__(self, input_name: str, images: np.ndarray, batch: int = 16):
        if images.ndim != 4 or len(images) == 0:
            raise UserError(f"calibration needs a non-empty (N, C, H, W) array, got shape {images.shape}")
        self.input_name = input_name
        self.images = np.ascontiguousarray(images, dtype=np.float32)
        self.batch = int(batch)
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(self.images), self.batch):
            yield {self.input_name: self.images[i:i + self.batch]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self._batches()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None

    def __len__(self) -> int:
        return (len(self.images) + self.batch - 1) // self.batch
