"""Data sets behind one interface: a spec string → :class:`DataBundle` (train/val/test splits,
labels, task, normalisation and the preprocessing that produced every sample).

Specs
    ``digits``                scikit-learn's handwritten digits (embedded; the default)
    ``digits-multilabel``     2x2 canvases of 1-4 digits; target = set of digits present
    ``imagefolder:PATH``      one subfolder of images per class (optionally under train/val/test)
    ``csv:PATH``              image path + label(s) per row (multi-label when a row has several)
    ``cifar10``, ``cifar100`` via torchvision (root: ``data_root`` or ``$COMPRESS_DATA_ROOT``)
    ``fashion-mnist``, ``mnist``, ``kmnist``   the MNIST-format files (IDX, raw or .gz) in ``data_root``,
                              ``$COMPRESS_DATA_ROOT`` or ``/usr/share/datasets/<name>`` (``make data``)
    ``idx:PATH``              a folder holding the four standard IDX files; labels "0".."K-1"

    bundle = load_data("digits", image_size=32, seed=0)
    loader = make_loader(bundle.train, batch_size=64, shuffle=True, seed=0)
"""
from __future__ import annotations

from .._lazy import lazy_exports

# Exported names → the submodule defining them. Loaded on first use, so that the torch-free parts
# (``compress.data.preprocess``, used by the model metadata and the ONNX side) do not import torch.
_EXPORTS = {
    "ArrayDataset": "datasets", "DataBundle": "datasets", "FileDataset": "datasets", "IndexSubset": "datasets",
    "seeded_split": "datasets", "INTERPOLATIONS": "preprocess", "Preprocess": "preprocess",
    "channel_stats": "preprocess", "KNOWN_SPECS": "loading", "load_data": "loading", "make_loader": "loading",
    "subset": "loading", "load_data_for_model": "for_model",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
