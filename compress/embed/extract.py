"""Embeddings of a model file: the pooled penultimate features, the vector that enters the final
Linear (``forward_head(forward_features(x), pre_logits=True)``), from PyTorch for a model
artifact (``.safetensors``, ``.dcz``) or from ONNX Runtime for an ONNX file exported with its
``embedding`` output (``compress export``, the default), so both give the same numbers.

    embedder = open_embedder("base.safetensors")
    features, targets = embed_dataset(embedder, bundle.test)     # (N, D) float32, (N,)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import UserError


@dataclass
class Embedder:
    """A model file as a function from a normalised image batch (N, C, H, W) float32 to its
    embeddings (N, D) float32, with the facts (``meta``) that say how to preprocess images."""

    path: Path
    meta: Any  # ModelMeta
    engine: str  # "pytorch" | "onnxruntime"
    run: Callable[[np.ndarray], np.ndarray]

    @property
    def name(self) -> str:
        return self.path.name


def _torch_embedder(path: Path, model, meta, device: str) -> Embedder:
    import torch

    from ..export import embed

    if not all(callable(getattr(model, a, None)) for a in ("forward_features", "forward_head")):
        raise UserError(f"{path}: the network has no forward_features/forward_head, so no embedding")
    model.eval().to(device)

    def run(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return embed(model, torch.from_numpy(np.ascontiguousarray(images)).to(device)).float().cpu().numpy()

    return Embedder(path, meta, "pytorch", run)


def _onnx_embedder(path: Path, meta, threads: int) -> Embedder:
    from ..onnx_meta import EMBEDDING_OUTPUT
    from ..runtime import ort_session

    if meta is None:
        raise UserError(f"{path}: an ONNX file without compress metadata (input size, mean/std unknown); "
                        f"export it with compress export")
    session = ort_session(path, threads=threads)
    names = [o.name for o in session.get_outputs()]
    if EMBEDDING_OUTPUT not in names:
        raise UserError(f"{path}: the ONNX graph has no {EMBEDDING_OUTPUT!r} output (outputs: {', '.join(names)}); "
                        f"re-export the model with compress export (--embedding is the default)")
    input_name = session.get_inputs()[0].name

    def run(images: np.ndarray) -> np.ndarray:
        return session.run([EMBEDDING_OUTPUT], {input_name: images.astype(np.float32, copy=False)})[0]

    return Embedder(path, meta, "onnxruntime", run)


def open_embedder(path: str | os.PathLike, *, device: str = "cpu", threads: int = 1) -> Embedder:
    """The embedder of a model file: a model artifact (``.safetensors``, a ``.dcz`` container) runs
    in PyTorch on ``device``; an ``.onnx`` file in ONNX Runtime with ``threads`` threads and must
    have the ``embedding`` output. :class:`UserError` for a missing or unreadable file, a network
    without the zoo's surface, or an ONNX file without that output."""
    from ..formats import open_model_file

    path = Path(path)
    loaded = open_model_file(path)
    if loaded.model is not None:
        return _torch_embedder(path, loaded.model, loaded.meta, device)
    return _onnx_embedder(Path(loaded.onnx_path), loaded.meta, threads)


def embed_dataset(embedder: Embedder, dataset, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings (N, D) float32, targets (N,)) of every sample of ``dataset``, in order."""
    import torch
    from torch.utils.data import DataLoader

    feats, targets = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        feats.append(np.asarray(embedder.run(x.numpy().astype(np.float32)), dtype=np.float32))
        targets.append(torch.as_tensor(y).numpy())
    if not feats:
        raise UserError("nothing to embed: the data split is empty")
    out = np.concatenate(feats)
    if out.ndim != 2:
        raise UserError(f"{embedder.path}: embeddings of shape {out.shape[1:]} per image, expected a vector")
    return out, np.concatenate(targets)
