"""``.dcz``: Deep Compression storage (Han et al. 2016 §2-3) with numpy and the standard library.

A ``.dcz`` holds a model's weight-shared tensors (codebook + entropy-coded indices, dense or in
the paper's sparse relative-index layout), raw tensors, the caller's JSON metadata and an
optional graph blob, every part checksummed. The web service loads one at start-up; the
``compress huffman`` commands write and read them. No torch, no ``compress``.

    dcz.write(path, header, [dcz.SharedTensor(...), dcz.RawTensor(...)], graph=None) -> Stats
    dcz.read(path) -> Container(.header, .tensors, .graph, .stats)
    dcz.read_header(path) -> dict
    dcz.expand(codebook, indices, scale=None) -> float32 array (what a shared tensor decodes to)

Modules: :mod:`dcz.container` (the file), :mod:`dcz.huffman` (canonical length-limited Huffman),
:mod:`dcz.ans` (optional ANS via constriction), :mod:`dcz.tables` (code tables).
"""
from .container import (Container, RawTensor, SharedTensor, Stats, TensorStats, expand, read, read_header,
                        write)
from .errors import DczError

__all__ = ["Container", "DczError", "RawTensor", "SharedTensor", "Stats", "TensorStats", "expand", "read",
           "read_header", "write"]
