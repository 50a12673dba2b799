"""The ``.dcz`` file: a model's weights after weight sharing, entropy-coded (Deep Compression,
Han et al. 2016 §2-3), with the caller's metadata and an optional graph blob. numpy only.

Layout (integers little-endian)

    bytes 0-7     magic ``\\x89DCZ\\r\\n\\x1a\\n``
    bytes 8-9     format version (1)
    bytes 10-11   flags (0)
    bytes 12-15   n, length of the deflated JSON header
    bytes 16-     the JSON header, UTF-8, zlib-deflated (n bytes)
    4 bytes       CRC-32 of everything before it (magic to the end of the JSON)
    data          the tensor payloads back to back in directory order, then the graph blob
                  (zlib-deflated)

The JSON header is ``{"meta": <the caller's dict>, "tensors": [<entry>...], "graph": null |
{"size", "crc32"}}``. An entry names the tensor (``name``, ``shape``, ``dtype`` of the decoded
array, ``kind`` shared|raw, ``layout`` dense|sparse|raw, ``coder`` huffman|ans), locates its
payload (``offset`` from the start of data, ``size``, ``crc32``) and the payload's sections
(``sections``: name -> bytes, stored in this order):

    codebook       K float32                                          (shared)
    scale          shape[0] float32 (float16 when that is exact, ``scale_dtype``), when there
                   is a per-channel scale                             (shared)
    weights_table  the code table of the weights stream (lengths for Huffman, counts for ANS;
                   :mod:`dcz.tables`)
    weights        the coded codebook indices: all of them (dense), or the kept ones and the
                   fillers (sparse)
    index_table    the code table of the gap stream                    (sparse)
    index          the coded gaps                                      (sparse)
    raw            the array's bytes, little-endian, C order; a float32 array whose values
                   float16 holds exactly is stored as float16 (``stored_dtype``)  (raw)

plus what decoding needs (``alphabet`` K, ``entries`` in each stream, ``zero_code``,
``index_bits`` b) and the figures :class:`Stats` reports (``count``, ``kept``, ``fillers``,
entropy bounds, ANS sizes).

Sparse layout (§2 of the paper): only positions whose index differs from ``zero_code`` are
stored, each as its codebook index plus the number of zero-code positions skipped since the
previous stored one (flattened C order), a gap of at most 2^b - 1. A longer run stores a
filler: gap 2^b - 1 and index ``zero_code``, which decodes to 0.0 like the positions it skips.
Trailing zero-code positions are implied by the shape. The writer tries b = 1..16 and dense,
estimating each from its Huffman code lengths (or, for ANS, its entropy), and keeps the smallest.

Integrity: :func:`read` refuses, with a one-line :class:`DczError`, a wrong magic, an unknown
version, a file shorter or longer than its header says, and any header, tensor or graph bytes
that fail their CRC-32 (which catches every burst error of up to 32 bits, so every flipped byte).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import ans, huffman
from .errors import DczError
from .tables import pack_uints, unpack_uints

MAGIC = b"\x89DCZ\r\n\x1a\n"
VERSION = 1
CODERS = ("huffman", "ans")
MAX_CODEBOOK = 1 << 16
MAX_INDEX_BITS = 16
_PRELUDE = struct.Struct("<8sHHI")
_CRC = struct.Struct("<I")
_RAW_KINDS = "biuf"


# ------------------------------------------------------------------------------------ tensors

def expand(codebook, indices, scale=None) -> np.ndarray:
    """The float32 tensor a shared tensor stands for: ``codebook[indices]``, then, with a
    ``scale`` (one factor per entry of the first axis, e.g. a folded BatchNorm), each slice
    ``[i]`` times ``scale[i]``, in float32. The encoder and :func:`read` both call this, so the
    weights a model is evaluated with and the decoded ones are identical bit for bit."""
    codebook = np.asarray(codebook, dtype=np.float32)
    indices = np.asarray(indices)
    if codebook.ndim != 1:
        raise DczError(f"a codebook must be 1-D, not of shape {codebook.shape}")
    if indices.size and indices.dtype.kind not in "ui":
        raise DczError(f"indices must be integers, not {indices.dtype}")
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= codebook.size):
        bad = int(indices.min()) if int(indices.min()) < 0 else int(indices.max())
        raise DczError(f"index {bad} is outside the codebook of {codebook.size} values")
    values = codebook[indices.astype(np.intp, copy=False)] if indices.size else np.zeros(indices.shape, np.float32)
    if scale is None:
        return values
    scale = np.asarray(scale, dtype=np.float32)
    if indices.ndim == 0 or scale.shape != (indices.shape[0],):
        raise DczError(f"scale of shape {scale.shape} does not match tensor of shape {indices.shape} "
                       "(one factor per entry of the first axis)")
    return (values.reshape(indices.shape[0], -1) * scale[:, None]).reshape(indices.shape)


@dataclass
class SharedTensor:
    """A weight-shared tensor: ``expand(codebook, indices, scale)``. ``codebook`` float32 [K]
    (K <= 65,536), ``indices`` integers < K of the tensor's shape, ``scale`` float32 [shape[0]]
    or None, ``zero_code`` the index whose codebook value is exactly 0.0 (enables the sparse
    layout; None: the first 0.0 in the codebook, if any)."""

    name: str
    codebook: np.ndarray
    indices: np.ndarray
    scale: np.ndarray | None = None
    zero_code: int | None = None

    def __post_init__(self):
        _check_name(self.name)
        self.codebook = np.ascontiguousarray(self.codebook, dtype=np.float32)
        self.indices = np.asarray(self.indices)
        what = f"shared tensor {self.name!r}"
        if self.codebook.ndim != 1 or not 1 <= self.codebook.size <= MAX_CODEBOOK:
            raise DczError(f"{what}: the codebook must be 1-D with 1 to {MAX_CODEBOOK} values, "
                           f"not of shape {self.codebook.shape}")
        if self.indices.dtype.kind not in "ui" and not (self.indices.size == 0 and self.indices.dtype.kind == "f"):
            raise DczError(f"{what}: indices must be integers, not {self.indices.dtype}")
        if self.indices.size and (int(self.indices.min()) < 0 or int(self.indices.max()) >= self.codebook.size):
            raise DczError(f"{what}: indices must be 0 to {self.codebook.size - 1} (the codebook's size)")
        if self.scale is not None:
            self.scale = np.ascontiguousarray(self.scale, dtype=np.float32)
            if self.indices.ndim == 0 or self.scale.shape != (self.indices.shape[0],):
                raise DczError(f"{what}: scale of shape {self.scale.shape} does not match indices of shape "
                               f"{self.indices.shape} (one factor per entry of the first axis)")
        if self.zero_code is None:
            zeros = np.flatnonzero(self.codebook == 0.0)
            self.zero_code = int(zeros[0]) if zeros.size else None
        else:
            if not isinstance(self.zero_code, (int, np.integer)) or not 0 <= self.zero_code < self.codebook.size:
                raise DczError(f"{what}: zero_code {self.zero_code!r} is not an index of the codebook")
            self.zero_code = int(self.zero_code)
            if self.codebook[self.zero_code] != 0.0:
                raise DczError(f"{what}: zero_code {self.zero_code} has codebook value "
                               f"{float(self.codebook[self.zero_code])!r}, not 0.0")


@dataclass
class RawTensor:
    """A tensor stored verbatim (biases, small tensors): bool, integer or float, any shape."""

    name: str
    array: np.ndarray

    def __post_init__(self):
        _check_name(self.name)
        self.array = np.asarray(self.array)
        if self.array.dtype.kind not in _RAW_KINDS:
            raise DczError(f"raw tensor {self.name!r}: dtype {self.array.dtype} is not bool, integer or float")


def _half_if_exact(array: np.ndarray) -> np.ndarray:
    """``array`` as little-endian float16 when that holds every float32 value exactly (biases and
    scales rounded by the caller, small integers), else as little-endian float32."""
    array = np.asarray(array, dtype=np.float32)
    with np.errstate(over="ignore"):
        half = array.astype("<f2")
    if np.array_equal(half.astype(np.float32), array):  # astype keeps the sign of zero
        return half
    return array.astype("<f4")


def _check_name(name) -> None:
    if not isinstance(name, str) or not name:
        raise DczError(f"a tensor name must be a non-empty string, not {name!r}")


# -------------------------------------------------------------------------------------- stats

@dataclass
class TensorStats:
    """Sizes of one tensor in the file. Bytes are whole sections; ``*_entropy_bits`` are the
    Shannon bounds of the streams actually stored; ``ans_*`` the same streams coded with ANS
    (None when constriction is not installed)."""

    name: str
    kind: str  # shared | raw
    layout: str  # dense | sparse | raw
    coder: str | None  # huffman | ans; None for raw
    count: int  # elements
    kept: int  # elements whose index is not zero_code (count for raw / without zero_code)
    fillers: int = 0  # filler entries of the sparse layout
    index_bits: int = 0  # b of the sparse layout
    weights_bytes: int = 0
    index_bytes: int = 0
    table_bytes: int = 0
    codebook_bytes: int = 0
    scale_bytes: int = 0
    raw_bytes: int = 0
    weights_entropy_bits: float = 0.0
    index_entropy_bits: float = 0.0
    ans_weights_bytes: int | None = None
    ans_index_bytes: int | None = None
    ans_table_bytes: int | None = None

    @property
    def payload_bytes(self) -> int:
        return (self.weights_bytes + self.index_bytes + self.table_bytes + self.codebook_bytes
                + self.scale_bytes + self.raw_bytes)


@dataclass
class Stats:
    """Sizes of a ``.dcz`` file: per tensor (:class:`TensorStats`) and for the file."""

    tensors: list[TensorStats] = field(default_factory=list)
    header_bytes: int = 0  # prelude + JSON + checksum
    graph_bytes: int = 0
    total_bytes: int = 0

    def totals(self) -> dict[str, Any]:
        """Sums over the tensors: stream bytes (weights + gaps), tables, codebooks, scales, raw,
        entropy bound (bytes, streams only) and ANS figures (None without constriction)."""
        t = self.tensors
        shared = [s for s in t if s.kind == "shared"]
        has_ans = all(s.ans_weights_bytes is not None for s in shared)
        return {
            "weights": sum(s.count for s in shared),
            "stream_bytes": sum(s.weights_bytes + s.index_bytes for s in t),
            "table_bytes": sum(s.table_bytes for s in t),
            "codebook_bytes": sum(s.codebook_bytes for s in t),
            "scale_bytes": sum(s.scale_bytes for s in t),
            "raw_bytes": sum(s.raw_bytes for s in t),
            "entropy_bytes": sum(s.weights_entropy_bits + s.index_entropy_bits for s in t) / 8,
            "ans_stream_bytes": sum(s.ans_weights_bytes + s.ans_index_bytes for s in shared) if has_ans else None,
            "ans_table_bytes": sum(s.ans_table_bytes for s in shared) if has_ans else None,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"tensors": [dataclasses.asdict(s) for s in self.tensors], "header_bytes": self.header_bytes,
                "graph_bytes": self.graph_bytes, "total_bytes": self.total_bytes, "total": self.totals()}


@dataclass
class Container:
    """A read ``.dcz``: the caller's header, the decoded tensors (name -> array, file order),
    the graph blob (or None) and the file's :class:`Stats`."""

    header: dict
    tensors: dict[str, np.ndarray]
    graph: bytes | None
    stats: Stats


# ----------------------------------------------------------------------------------- streams

def _stream_counts(symbols: np.ndarray, alphabet: int) -> np.ndarray:
    return np.bincount(symbols, minlength=alphabet) if symbols.size else np.zeros(alphabet, np.int64)


def _estimate_bytes(counts: np.ndarray, coder: str) -> float:
    """Approximate stored size of a stream with these counts, its table included."""
    if coder == "huffman":
        lengths = huffman.code_lengths(counts)
        n = int(counts.sum())
        index = 6 + n / huffman._block_size(n) * 1.5 if n else 0  # the block index, about 12 bits a block
        return huffman.coded_bits(counts, lengths) / 8 + len(pack_uints(lengths)) + index
    return huffman.entropy_bits(counts) / 8 + 8 + len(pack_uints(counts))


def _encode_stream(symbols: np.ndarray, alphabet: int, coder: str) -> tuple[bytes, bytes]:
    """(table, stream) of ``symbols`` under ``coder``."""
    counts = _stream_counts(symbols, alphabet)
    if coder == "huffman":
        lengths = huffman.code_lengths(counts)
        return pack_uints(lengths), huffman.encode(symbols, lengths)
    return pack_uints(counts), ans.encode(symbols, counts)


def _decode_stream(table: bytes, stream: bytes, alphabet: int, count: int, coder: str) -> np.ndarray:
    if coder == "huffman":
        return huffman.decode(stream, unpack_uints(table, alphabet), count)
    counts = unpack_uints(table, alphabet)
    if int(counts.sum()) != count:
        raise DczError(f"its ANS count table sums to {int(counts.sum())}, not the stream's {count} symbols")
    return ans.decode(stream, counts, count)


def _sparse_streams(flat: np.ndarray, zero_code: int, bits: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(weights, gaps, fillers) of the sparse layout with ``bits``-bit gaps."""
    kept_at = np.flatnonzero(flat != zero_code)
    runs = np.diff(kept_at, prepend=-1) - 1
    top = (1 << bits) - 1
    per_kept = (runs >> bits) + 1  # fillers before a kept entry, and the entry itself
    ends = np.cumsum(per_kept) - 1
    entries = int(ends[-1]) + 1 if ends.size else 0
    gaps = np.full(entries, top, np.int64)
    gaps[ends] = runs & top
    weights = np.full(entries, zero_code, flat.dtype)
    weights[ends] = flat[kept_at]
    return weights, gaps, entries - kept_at.size


def _best_index_bits(flat: np.ndarray, zero_code: int, alphabet: int, coder: str) -> tuple[int, float]:
    """(b, estimated bytes) of the cheapest sparse layout over b = 1..16."""
    kept_at = np.flatnonzero(flat != zero_code)
    kept_counts = _stream_counts(flat[kept_at], alphabet)
    run_hist = np.bincount(np.diff(kept_at, prepend=-1) - 1) if kept_at.size else np.zeros(1, np.int64)
    runs = np.flatnonzero(run_hist)  # the distinct run lengths, then how often each occurs
    times = run_hist[runs]
    best = (0, float("inf"))
    for bits in range(1, MAX_INDEX_BITS + 1):
        top = (1 << bits) - 1
        fillers = int((times * (runs >> bits)).sum())
        gap_counts = np.bincount(runs & top, weights=times, minlength=1 << bits).astype(np.int64)
        gap_counts[top] += fillers
        weight_counts = kept_counts.copy()
        weight_counts[zero_code] += fillers
        size = _estimate_bytes(weight_counts, coder) + _estimate_bytes(gap_counts, coder)
        if size < best[1]:
            best = (bits, size)
    return best


def _encode_shared(t: SharedTensor, coder: str, measure_ans: bool) -> tuple[bytes, dict]:
    alphabet = t.codebook.size
    flat = t.indices.reshape(-1).astype(np.uint8 if alphabet <= 256 else np.uint16)
    count = flat.size
    kept = count if t.zero_code is None else int(np.count_nonzero(flat != t.zero_code))
    layout, bits = "dense", 0
    if t.zero_code is not None and count:
        bits, sparse_size = _best_index_bits(flat, t.zero_code, alphabet, coder)
        if sparse_size < _estimate_bytes(_stream_counts(flat, alphabet), coder):
            layout = "sparse"
    fillers = 0
    if layout == "sparse":
        weights, gaps, fillers = _sparse_streams(flat, t.zero_code, bits)
    else:
        weights, gaps = flat, np.zeros(0, np.int64)
    streams = {"weights": weights, "index": gaps}
    alphabets = {"weights": alphabet, "index": 1 << bits if bits else 1}
    sections = {"codebook": t.codebook.astype("<f4").tobytes()}
    scale_dtype = None
    if t.scale is not None:
        scale = _half_if_exact(t.scale)
        sections["scale"], scale_dtype = scale.tobytes(), scale.dtype.str
    for key in ("weights", "index") if layout == "sparse" else ("weights",):
        sections[key + "_table"], sections[key] = _encode_stream(streams[key], alphabets[key], coder)
    entropy = [huffman.entropy_bits(_stream_counts(streams[k], alphabets[k])) for k in ("weights", "index")]
    ans_bytes = None
    if coder == "ans":
        ans_bytes = [len(sections.get(k, b"")) for k in ("weights", "index")]
        ans_bytes.append(len(sections["weights_table"]) + len(sections.get("index_table", b"")))
    elif measure_ans:
        ans_bytes = [0, 0, 0]
        for i, key in enumerate(("weights", "index") if layout == "sparse" else ("weights",)):
            table, stream = _encode_stream(streams[key], alphabets[key], "ans")
            ans_bytes[i] += len(stream)
            ans_bytes[2] += len(table)
    entry = {"kind": "shared", "shape": list(t.indices.shape), "dtype": "<f4", "layout": layout, "coder": coder,
             "count": count, "kept": kept, "fillers": fillers, "index_bits": bits, "alphabet": alphabet,
             "zero_code": t.zero_code, "entries": int(weights.size), "entropy_bits": entropy, "ans_bytes": ans_bytes}
    if scale_dtype is not None:
        entry["scale_dtype"] = scale_dtype
    return _sections(sections, entry)


def _encode_raw(t: RawTensor) -> tuple[bytes, dict]:
    array = t.array.astype(t.array.dtype.newbyteorder("<"), copy=False)  # 0-d stays 0-d
    entry = {"kind": "raw", "shape": list(array.shape), "dtype": array.dtype.str, "layout": "raw",
             "count": int(array.size), "kept": int(array.size)}
    if array.dtype == np.float32 and array.size:
        stored = _half_if_exact(array)
        if stored.dtype != array.dtype:
            entry["stored_dtype"], array = stored.dtype.str, stored
    return _sections({"raw": array.tobytes()}, entry)


def _sections(sections: dict[str, bytes], entry: dict) -> tuple[bytes, dict]:
    payload = b"".join(sections.values())
    entry.update(sections={k: len(v) for k, v in sections.items()}, size=len(payload), crc32=zlib.crc32(payload))
    return payload, entry


# -------------------------------------------------------------------------------------- write

def write(path: str | os.PathLike, header: dict, tensors: list, graph: bytes | None = None,
          coder: str = "huffman") -> Stats:
    """Write ``tensors`` (:class:`SharedTensor` / :class:`RawTensor`), the caller's ``header``
    (a JSON-serialisable dict: model metadata etc.) and an optional ``graph`` blob to ``path``
    as a ``.dcz`` (see the module docstring). Each shared tensor gets the smaller of the dense
    and the sparse layout. ``coder`` is "huffman" (default) or "ans" (needs constriction).
    Atomic: the file is written under a temporary name in the same folder and renamed into
    place, so ``path`` is either the old file or the complete new one. Returns the sizes."""
    if coder not in CODERS:
        raise DczError(f"unknown coder {coder!r}; choose one of {', '.join(CODERS)}")
    if coder == "ans":
        ans._constriction()
    if not isinstance(header, dict):
        raise DczError(f"the header must be a dict, not {type(header).__name__}")
    if graph is not None and not isinstance(graph, (bytes, bytearray, memoryview)):
        raise DczError(f"the graph must be bytes or None, not {type(graph).__name__}")
    names = [getattr(t, "name", None) for t in tensors]
    if len(set(names)) != len(names):
        raise DczError(f"tensor name {next(n for n in names if names.count(n) > 1)!r} occurs twice")
    measure_ans = coder == "huffman" and ans.available()
    payloads, entries, offset = [], [], 0
    for t in tensors:
        if isinstance(t, SharedTensor):
            payload, entry = _encode_shared(t, coder, measure_ans)
        elif isinstance(t, RawTensor):
            payload, entry = _encode_raw(t)
        else:
            raise DczError(f"expected SharedTensor or RawTensor, not {type(t).__name__}")
        entries.append({"name": t.name, **entry, "offset": offset})
        payloads.append(payload)
        offset += len(payload)
    graph = zlib.compress(bytes(graph), 9) if graph is not None else None
    document = {"meta": header, "tensors": entries,
                "graph": None if graph is None else {"size": len(graph), "crc32": zlib.crc32(graph)}}
    try:
        text = zlib.compress(json.dumps(document, separators=(",", ":")).encode(), 9)
    except (TypeError, ValueError) as e:
        raise DczError(f"the header is not JSON-serialisable ({e})") from None
    head = _PRELUDE.pack(MAGIC, VERSION, 0, len(text)) + text
    head += _CRC.pack(zlib.crc32(head))
    chunks = [head, *payloads] + ([graph] if graph is not None else [])
    _write_atomic(Path(path), chunks)
    stats = _stats(entries, len(head), len(graph) if graph is not None else 0)  # stored (deflated) sizes
    return stats


def _write_atomic(path: Path, chunks: list[bytes]) -> None:
    if path.is_dir():
        raise DczError(f"{path}: is a directory, expected a .dcz file name")
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise DczError(f"{path}: cannot write ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


# --------------------------------------------------------------------------------------- read

def _stats(entries: list[dict], header_bytes: int, graph_bytes: int) -> Stats:
    tensors = []
    for e in entries:
        s = e["sections"]
        ans_bytes = e.get("ans_bytes")
        entropy = e.get("entropy_bits") or [0.0, 0.0]
        tensors.append(TensorStats(
            name=e["name"], kind=e["kind"], layout=e["layout"], coder=e.get("coder"), count=e["count"],
            kept=e["kept"], fillers=e.get("fillers", 0), index_bits=e.get("index_bits", 0),
            weights_bytes=s.get("weights", 0), index_bytes=s.get("index", 0),
            table_bytes=s.get("weights_table", 0) + s.get("index_table", 0),
            codebook_bytes=s.get("codebook", 0), scale_bytes=s.get("scale", 0), raw_bytes=s.get("raw", 0),
            weights_entropy_bits=float(entropy[0]), index_entropy_bits=float(entropy[1]),
            ans_weights_bytes=ans_bytes[0] if ans_bytes else None, ans_index_bytes=ans_bytes[1] if ans_bytes else None,
            ans_table_bytes=ans_bytes[2] if ans_bytes else None))
    data = sum(e["size"] for e in entries)
    return Stats(tensors, header_bytes, graph_bytes, header_bytes + data + graph_bytes)


def _parse_head(buf: bytes, file_size: int, where: str) -> tuple[dict, int]:
    """(document, header bytes) from the start of a file of ``file_size`` bytes; ``buf`` holds at
    least the whole header when the file does."""
    if file_size == 0:
        raise DczError(f"{where}: empty file, not a .dcz")
    if buf[:len(MAGIC)] != MAGIC[:min(len(buf), len(MAGIC))]:
        raise DczError(f"{where}: not a .dcz file (wrong magic bytes)")
    if file_size < _PRELUDE.size:
        raise DczError(f"{where}: truncated .dcz ({file_size} bytes, shorter than its {_PRELUDE.size}-byte prelude)")
    _, version, flags, length = _PRELUDE.unpack_from(buf)
    if version != VERSION:
        raise DczError(f"{where}: unsupported .dcz version {version} (this reader knows version {VERSION})")
    if flags:
        raise DczError(f"{where}: unknown .dcz flags 0x{flags:04x} (header corrupt or from a newer writer)")
    end = _PRELUDE.size + length
    if file_size < end + _CRC.size:
        raise DczError(f"{where}: truncated .dcz (the header needs {end + _CRC.size} bytes, the file has {file_size})")
    (crc,) = _CRC.unpack_from(buf, end)
    if zlib.crc32(buf[:end]) != crc:
        raise DczError(f"{where}: header checksum mismatch (corrupt header)")
    try:
        document = json.loads(_inflate(buf[_PRELUDE.size:end], "header").decode("utf-8"))
        if not isinstance(document, dict) or not isinstance(document.get("meta"), dict) \
                or not isinstance(document.get("tensors"), list):
            raise TypeError("not a {meta, tensors, graph} object")
    except (ValueError, TypeError) as e:
        raise DczError(f"{where}: corrupt header ({str(e).splitlines()[0]})") from None
    return document, end + _CRC.size


MAX_INFLATED = 1 << 30  # a header or graph that inflates beyond this is refused (a zip bomb)


def _inflate(data, what: str) -> bytes:
    """zlib-inflate ``data`` (the header JSON and the graph are stored deflated); ValueError
    when it is not a complete zlib stream or inflates beyond :data:`MAX_INFLATED`."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(bytes(data), MAX_INFLATED)
    except zlib.error as e:
        raise ValueError(f"the {what} does not inflate ({e})") from None
    if d.unconsumed_tail or not d.eof or d.unused_data:
        raise ValueError(f"the {what} is not one complete zlib stream (or inflates beyond {MAX_INFLATED} bytes)")
    return out


def _nonneg_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _check_directory(document: dict, where: str) -> int:
    """Validate the directory's bookkeeping; return the data size it describes."""
    offset = 0
    names = set()
    for i, e in enumerate(document["tensors"]):
        ok = (isinstance(e, dict) and isinstance(e.get("name"), str) and e["name"] not in names
              and isinstance(e.get("shape"), list) and all(_nonneg_int(d) for d in e["shape"])
              and e.get("offset") == offset and _nonneg_int(e.get("size")) and _nonneg_int(e.get("crc32"))
              and isinstance(e.get("sections"), dict) and all(_nonneg_int(v) for v in e["sections"].values())
              and sum(e["sections"].values()) == e["size"] and e.get("count") == math.prod(e["shape"])
              and (e.get("kind"), e.get("layout")) in {("shared", "dense"), ("shared", "sparse"), ("raw", "raw")})
        if not ok:
            raise DczError(f"{where}: corrupt directory entry {i} ({e.get('name') if isinstance(e, dict) else e!r})")
        names.add(e["name"])
        offset += e["size"]
    graph = document.get("graph")
    if graph is not None and not (isinstance(graph, dict) and _nonneg_int(graph.get("size"))
                                  and _nonneg_int(graph.get("crc32"))):
        raise DczError(f"{where}: corrupt graph entry in the header")
    return offset + (graph["size"] if graph else 0)


def _check_size(file_size: int, expected: int, where: str) -> None:
    if file_size < expected:
        raise DczError(f"{where}: truncated .dcz ({file_size} bytes, its header describes {expected})")
    if file_size > expected:
        raise DczError(f"{where}: {file_size - expected} trailing bytes after the end of the .dcz data")


def read_header(path: str | os.PathLike) -> dict:
    """The caller's header dict of a ``.dcz`` without decoding tensors: the prelude, the header
    checksum and the file size are checked, the tensor and graph checksums are not."""
    where = str(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            buf = f.read(_PRELUDE.size)
            if len(buf) == _PRELUDE.size and buf[:len(MAGIC)] == MAGIC:
                buf += f.read(_PRELUDE.unpack(buf)[3] + _CRC.size)
    except OSError as e:
        raise DczError(f"{where}: cannot read ({e.strerror or e})") from None
    document, head = _parse_head(buf, size, where)
    _check_size(size, head + _check_directory(document, where), where)
    return document["meta"]


def read(path: str | os.PathLike) -> Container:
    """Read and decode a ``.dcz`` (see the module docstring). Every check fails with a one-line
    :class:`DczError` naming the problem before anything is decoded from the failing part."""
    where = str(path)
    try:
        buf = Path(path).read_bytes()
    except OSError as e:
        raise DczError(f"{where}: cannot read ({e.strerror or e})") from None
    document, head = _parse_head(buf, len(buf), where)
    _check_size(len(buf), head + _check_directory(document, where), where)
    view = memoryview(buf)
    tensors = {}
    for e in document["tensors"]:
        payload = view[head + e["offset"]:head + e["offset"] + e["size"]]
        if zlib.crc32(payload) != e["crc32"]:
            raise DczError(f"{where}: tensor {e['name']!r} fails its checksum (corrupt data)")
        try:
            tensors[e["name"]] = _decode_tensor(e, payload)
        except (DczError, ValueError, TypeError, KeyError, IndexError, OverflowError) as err:
            raise DczError(f"{where}: tensor {e['name']!r} does not decode: {str(err).splitlines()[0]}") from None
    graph = None
    if document.get("graph"):
        start = head + sum(e["size"] for e in document["tensors"])
        graph = bytes(view[start:start + document["graph"]["size"]])
        if zlib.crc32(graph) != document["graph"]["crc32"]:
            raise DczError(f"{where}: graph fails its checksum (corrupt data)")
        try:
            graph = _inflate(graph, "graph")
        except ValueError as e:
            raise DczError(f"{where}: {e}") from None
    stats = _stats(document["tensors"], head, document["graph"]["size"] if document.get("graph") else 0)
    return Container(document["meta"], tensors, graph, stats)


def _decode_tensor(e: dict, payload: memoryview) -> np.ndarray:
    parts, at = {}, 0
    for key, size in e["sections"].items():
        parts[key] = payload[at:at + size]
        at += size
    shape = tuple(e["shape"])
    if e["kind"] == "raw":
        dtype = np.dtype(e["dtype"])
        if dtype.kind not in _RAW_KINDS or dtype.byteorder == ">":
            raise DczError(f"unsupported raw dtype {e['dtype']!r}")
        stored = np.dtype(e.get("stored_dtype", e["dtype"]))
        if stored != dtype and (stored.str, dtype.str) != ("<f2", "<f4"):
            raise DczError(f"unsupported stored dtype {e.get('stored_dtype')!r} for {e['dtype']!r}")
        raw = parts.get("raw", b"")
        if len(raw) != e["count"] * stored.itemsize:
            raise DczError(f"{len(raw)} bytes do not hold {e['count']} values of {stored}")
        return np.frombuffer(raw, stored).astype(dtype).reshape(shape)
    alphabet, count, entries = e["alphabet"], e["count"], e["entries"]
    codebook = np.frombuffer(parts["codebook"], "<f4")
    if codebook.size != alphabet or not 1 <= alphabet <= MAX_CODEBOOK:
        raise DczError(f"a codebook of {codebook.size} values, the directory says {alphabet}")
    scale_dtype = e.get("scale_dtype", "<f4")
    if scale_dtype not in ("<f4", "<f2"):
        raise DczError(f"unsupported scale dtype {scale_dtype!r}")
    scale = np.frombuffer(parts["scale"], scale_dtype).astype(np.float32) if "scale" in parts else None
    if e["coder"] not in CODERS:
        raise DczError(f"unknown coder {e['coder']!r}")
    weights = _decode_stream(parts["weights_table"], parts["weights"], alphabet, entries, e["coder"])
    if e["layout"] == "dense":
        if entries != count:
            raise DczError(f"a dense stream of {entries} entries for {count} elements")
        indices = weights
    else:
        bits, zero_code = e["index_bits"], e["zero_code"]
        if not 1 <= bits <= MAX_INDEX_BITS or not 0 <= zero_code < alphabet:
            raise DczError(f"sparse layout with index bits {bits!r} and zero code {zero_code!r}")
        gaps = _decode_stream(parts["index_table"], parts["index"], 1 << bits, entries, e["coder"])
        at = np.cumsum(gaps.astype(np.int64) + 1) - 1
        if at.size and at[-1] >= count:
            raise DczError(f"its gaps run to position {int(at[-1])} of a tensor of {count} elements")
        indices = np.full(count, zero_code, weights.dtype)
        indices[at] = weights
    return expand(codebook, indices.reshape(shape), scale)
