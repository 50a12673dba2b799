"""Optional ANS coding of integer symbols through ``constriction`` (``--coder ans``).

Asymmetric numeral systems code a stream to within a fraction of a percent of its entropy,
where Huffman needs at least one bit per symbol (a stream that is 99 % one symbol costs Huffman
1 bit/symbol, ANS 0.08). The model is the stream's own symbol counts: a categorical over the
symbols that occur, in symbol order, quantised by constriction (``perfect=False``, its 24-bit
default), so encoder and decoder rebuild the identical model from the counts alone. The counts
are stored as a table (:mod:`dcz.tables`); the stream is constriction's compressed uint32
words, little-endian. ``constriction`` is imported only when this coder is used.
"""
from __future__ import annotations

import numpy as np

from .errors import DczError


def _constriction():
    try:
        import constriction
    except ImportError:
        raise DczError("the ANS coder needs constriction: install constriction (pip install constriction)") from None
    return constriction


def available() -> bool:
    """Whether ``constriction`` imports (ANS coding and the ANS size figures are possible)."""
    try:
        _constriction()
    except DczError:
        return False
    return True


def _model(constriction, counts: np.ndarray):
    counts = np.asarray(counts)
    if counts.ndim != 1 or (counts.size and counts.dtype.kind not in "ui") or (counts.size and counts.min() < 0):
        raise DczError("ANS symbol counts must be a 1-D array of non-negative integers")
    used = np.flatnonzero(counts)
    probabilities = counts[used].astype(np.float64)
    return constriction.stream.model.Categorical(probabilities, perfect=False), used


def encode(symbols, counts) -> bytes:
    """``symbols`` (any shape, C order) ANS-coded under the model of ``counts`` (which must
    give every occurring symbol a non-zero count; normally ``np.bincount(symbols)``)."""
    symbols = np.asarray(symbols).reshape(-1)
    if symbols.size == 0:
        return b""
    if symbols.dtype.kind not in "ui":
        raise DczError(f"symbols must be integers, not {symbols.dtype}")
    counts = np.asarray(counts)
    lo, hi = int(symbols.min()), int(symbols.max())
    if lo < 0 or hi >= counts.size:
        raise DczError(f"symbol {lo if lo < 0 else hi} is outside the {counts.size}-symbol count table")
    constriction = _constriction()
    if counts.ndim != 1 or counts.dtype.kind not in "ui" or counts.min() < 0:
        raise DczError("ANS symbol counts must be a 1-D array of non-negative integers")
    used = np.flatnonzero(counts)
    rank = np.full(counts.size, -1, np.int32)
    rank[used] = np.arange(used.size, dtype=np.int32)
    ranks = rank[symbols]
    if ranks.min() < 0:
        raise DczError(f"symbol {int(symbols[np.argmin(ranks)])} occurs but has count 0")
    if used.size == 1:  # one symbol: its count says it all
        return b""
    model, _ = _model(constriction, counts)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(ranks, model)
    return coder.get_compressed().astype("<u4").tobytes()


def decode(data: bytes, counts, count: int) -> np.ndarray:
    """The ``count`` symbols coded in ``data`` by :func:`encode` with the same ``counts`` (int32).
    Data of the wrong length, or that does not decode to exactly ``count`` symbols, is a
    :class:`DczError`."""
    count = int(count)
    counts = np.asarray(counts)
    if count < 0:
        raise DczError(f"symbol count must be non-negative, not {count}")
    if count == 0 or np.count_nonzero(counts) == 1:
        if len(data):
            raise DczError(f"an ANS stream of {count} symbols of one kind must have no bytes, not {len(data)}")
        if count and int(counts.sum()) != count:
            raise DczError(f"ANS count table says {int(counts.sum())} symbols, the stream {count}")
        return np.full(count, int(np.flatnonzero(counts)[0]) if count else 0, np.int32)
    if len(data) % 4 or not len(data):
        raise DczError(f"an ANS stream must be a non-empty multiple of 4 bytes, not {len(data)}")
    constriction = _constriction()
    model, used = _model(constriction, counts)
    try:
        coder = constriction.stream.stack.AnsCoder(np.frombuffer(data, "<u4").astype(np.uint32))
        ranks = coder.decode(model, count)
        done = coder.is_empty()
    except (ValueError, RuntimeError, AssertionError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DczError(f"ANS stream does not decode ({reason})") from None
    if not done:
        raise DczError(f"ANS stream is corrupt: it does not end after exactly {count} symbols")
    return used[ranks].astype(np.int32)
