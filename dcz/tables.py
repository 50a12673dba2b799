"""Compact storage of the small integer tables that travel with each coded stream.

A table is a vector of non-negative integers (Huffman code lengths, one per symbol; ANS symbol
counts) cut after its last non-zero entry and written as

    byte 0      bits 0-3: width of one entry in bytes (1, 2, 4 or 8); bit 4: payload is zlib'd
    bytes 1-4   number of entries n, uint32 little-endian
    bytes 5-    n entries little-endian (``width`` bytes each), or their zlib compression,
                whichever is shorter

so a 16-symbol length table costs 21 bytes and a sparse 65,536-symbol one a few hundred.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

from .errors import DczError

_ZLIB = 0x10
_HEAD = struct.Struct("<BI")


def pack_uints(values: np.ndarray) -> bytes:
    """``values`` (1-D, non-negative integers) as table bytes (see the module docstring)."""
    values = np.asarray(values)
    if values.ndim != 1 or (values.size and values.dtype.kind not in "ui"):
        raise DczError("a table must be a 1-D array of integers")
    if values.size and int(values.min()) < 0:
        raise DczError("a table holds non-negative integers only")
    used = np.flatnonzero(values)
    n = int(used[-1]) + 1 if used.size else 0
    top = int(values[:n].max()) if n else 0
    width = next(w for w in (1, 2, 4, 8) if top < 1 << (8 * w))
    raw = values[:n].astype(f"<u{width}").tobytes()
    packed = zlib.compress(raw, 9)
    if len(packed) < len(raw):
        return _HEAD.pack(width | _ZLIB, n) + packed
    return _HEAD.pack(width, n) + raw


def unpack_uints(data: bytes, size: int | None = None) -> np.ndarray:
    """The table in ``data`` as int64, zero-padded to ``size`` entries when given."""
    if len(data) < _HEAD.size:
        raise DczError(f"a code table of {len(data)} bytes is shorter than its {_HEAD.size}-byte head")
    flags, n = _HEAD.unpack_from(data)
    width = flags & 0x0F
    if width not in (1, 2, 4, 8) or flags & ~(0x0F | _ZLIB):
        raise DczError(f"a code table has unknown flags 0x{flags:02x}")
    body = bytes(data[_HEAD.size:])
    if flags & _ZLIB:
        try:
            decomp = zlib.decompressobj()
            body = decomp.decompress(body, n * width + 1)
        except zlib.error as e:
            raise DczError(f"a compressed code table does not inflate ({e})") from None
        if not decomp.eof or decomp.unused_data:
            raise DczError("a compressed code table does not end where its stream ends")
    if len(body) != n * width:
        raise DczError(f"a code table of {n} entries holds {len(body)} bytes, expected {n * width}")
    values = np.frombuffer(body, dtype=f"<u{width}").astype(np.int64)
    if width == 8 and values.size and int(values.min()) < 0:
        raise DczError("a code table holds an entry beyond 2^63")
    if size is not None:
        if n > size:
            raise DczError(f"a code table of {n} entries exceeds the {size}-symbol alphabet")
        values = np.concatenate([values, np.zeros(size - n, np.int64)])
    return values
