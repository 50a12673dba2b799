"""The ``.dcz`` package: Huffman/ANS codecs (round trip, optimality, length limit), the container
(layouts, exact decoding, refusals of damaged files) and its torch-free import."""
import heapq
import itertools
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dcz
from dcz import ans, huffman
from dcz.container import MAGIC
from dcz.tables import pack_uints, unpack_uints

HAS_ANS = ans.available()


# ----------------------------------------------------------------------------------- streams

@st.composite
def streams(draw):
    """(symbols, alphabet size): one symbol, all equal, very skewed, uniform, random weights;
    alphabets up to 65,536; empty streams."""
    alphabet = draw(st.sampled_from([1, 2, 3, 16, 255, 256, 257, 4096, 65536]) | st.integers(1, 65536))
    count = draw(st.sampled_from([0, 1, 2, 100, 5000]) | st.integers(0, 3000))
    kind = draw(st.sampled_from(["single", "uniform", "skewed", "random", "geometric"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "single":
        symbols = np.full(count, rng.integers(alphabet))
    elif kind == "uniform":
        symbols = rng.integers(0, alphabet, count)
    elif kind == "skewed":  # one symbol 99.99 %
        symbols = np.where(rng.random(count) < 0.9999, alphabet - 1, rng.integers(0, alphabet, count))
    elif kind == "geometric":
        symbols = np.minimum(rng.geometric(0.3, count) - 1, alphabet - 1)
    else:
        p = rng.random(min(alphabet, 64)) ** 4
        symbols = rng.choice(rng.choice(alphabet, p.size, replace=False), count, p=p / p.sum())
    return symbols.astype(np.uint16 if alphabet <= 65536 else np.int64), alphabet


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_huffman_round_trip_and_bounds(case):
    symbols, alphabet = case
    counts = np.bincount(symbols, minlength=alphabet)
    lengths = huffman.code_lengths(counts)
    data = huffman.encode(symbols, lengths)
    back = huffman.decode(data, lengths, symbols.size)
    assert np.array_equal(back, symbols)
    assert np.array_equal(unpack_uints(pack_uints(lengths), alphabet), lengths)
    if symbols.size and np.count_nonzero(counts) > 1:
        entropy = huffman.entropy_bits(counts) / symbols.size
        average = huffman.coded_bits(counts, lengths) / symbols.size
        assert entropy - 1e-9 <= average < entropy + 1
    if symbols.size >= 5000:  # the block index costs little: under 0.1 bit/symbol plus a 6-byte head
        assert 8 * len(data) <= huffman.coded_bits(counts, lengths) + 0.1 * symbols.size + 8 * 6 + 7


@pytest.mark.skipif(not HAS_ANS, reason="constriction not installed")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_ans_round_trip(case):
    symbols, alphabet = case
    counts = np.bincount(symbols, minlength=alphabet)
    data = ans.encode(symbols, counts)
    assert np.array_equal(ans.decode(data, counts, symbols.size), symbols)
    if symbols.size >= 1000:  # within 1 % + 64 bits of the entropy
        assert 8 * len(data) <= 1.01 * huffman.entropy_bits(counts) + 64


def _huffman_cost(counts):
    """Cost (bits) of an unrestricted Huffman code, by the textbook heap construction."""
    heap = [int(c) for c in counts if c > 0]
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        a, b = heapq.heappop(heap), heapq.heappop(heap)
        cost += a + b
        heapq.heappush(heap, a + b)
    return cost


def _kraft(lengths) -> float:
    used = lengths[lengths > 0].astype(np.float64)
    return float((2.0 ** -used).sum())


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 10**6), min_size=2, max_size=7), st.integers(1, 5))
def test_length_limited_codes_are_optimal(counts, max_length):
    """Package-merge against brute force over every length vector of tiny alphabets."""
    counts = np.array(counts)
    used = np.flatnonzero(counts)
    if used.size > 2 ** max_length:
        with pytest.raises(dcz.DczError, match="do not fit"):
            huffman.code_lengths(counts, max_length)
        return
    lengths = huffman.code_lengths(counts, max_length)
    assert lengths.max() <= max(max_length, 1) and _kraft(lengths) <= 1
    assert np.all((lengths > 0) == (counts > 0))
    if used.size < 2:
        return
    best = min(sum(int(counts[s]) * n for s, n in zip(used, combo))
               for combo in itertools.product(range(1, max_length + 1), repeat=used.size)
               if sum(2.0 ** -n for n in combo) <= 1)
    assert huffman.coded_bits(counts, lengths) == best
    assert huffman.coded_bits(counts, huffman.code_lengths(counts, 32)) == _huffman_cost(counts)


def test_length_limit_binds_on_fibonacci_counts():
    counts = np.array([1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987])
    free = huffman.code_lengths(counts, 32)
    assert free.max() == 15
    limited = huffman.code_lengths(counts, 8)
    assert limited.max() == 8 and _kraft(limited) == 1
    free_bits, limited_bits = huffman.coded_bits(counts, free), huffman.coded_bits(counts, limited)
    assert free_bits < limited_bits < 1.05 * free_bits
    symbols = np.repeat(np.arange(16), counts)
    assert np.array_equal(huffman.decode(huffman.encode(symbols, limited), limited, symbols.size), symbols)


def test_code_lengths_are_canonical_and_deterministic():
    assert huffman.code_lengths([0, 7, 0]).tolist() == [0, 1, 0]  # one used symbol: length 1
    assert huffman.code_lengths([5, 5, 5, 5]).tolist() == [2, 2, 2, 2]
    assert huffman.code_lengths([1, 1, 1]).tolist() == [1, 2, 2]  # ties: lower symbol, shorter code
    codes = huffman.canonical_codes(np.array([2, 1, 3, 3]))
    assert codes.tolist() == [0b10, 0b0, 0b110, 0b111]


def test_huffman_refusals():
    lengths = huffman.code_lengths([10, 5, 1, 0])
    with pytest.raises(dcz.DczError, match="Kraft"):
        huffman.encode([0, 1], [1, 1, 1])
    with pytest.raises(dcz.DczError, match="Kraft"):
        huffman.decode(b"\0" * 8, [1, 1, 1], 1)
    with pytest.raises(dcz.DczError, match="symbol 3 has no code"):
        huffman.encode([0, 3], lengths)
    with pytest.raises(dcz.DczError, match="outside"):
        huffman.encode([4], lengths)
    with pytest.raises(dcz.DczError, match="0 to 24"):
        huffman.encode([0], [25, 1])
    symbols = np.random.default_rng(0).choice(3, 10_000, p=[0.6, 0.3, 0.1])
    data = huffman.encode(symbols, lengths)
    for cut in (0, 3, 6, len(data) // 2, len(data) - 1):
        with pytest.raises(dcz.DczError, match="too short"):
            huffman.decode(data[:cut], lengths, symbols.size)
    with pytest.raises(dcz.DczError, match="too long"):
        huffman.decode(data + b"\0", lengths, symbols.size)
    with pytest.raises(dcz.DczError):  # asks for more symbols than were coded
        huffman.decode(data, lengths, symbols.size + 5000)
    with pytest.raises(dcz.DczError, match="too (long|short)"):  # the block index no longer adds up
        huffman.decode(_flip(data, 6, 0xFF), lengths, symbols.size)
    with pytest.raises(dcz.DczError, match="block .* does not end where"):  # codes out of step
        huffman.decode(_flip(data, len(data) // 2, 0xFF), lengths, symbols.size)


def test_code_tables_round_trip_and_refusals():
    for values in ([], [0, 0], [3, 0, 1, 0], [70_000, 1], [2**40, 5]):
        table = pack_uints(np.array(values, np.int64))
        assert unpack_uints(table, len(values) + 2).tolist() == values + [0, 0]
    big = np.zeros(65536, np.int64)
    big[[5, 900, 65000]] = 7
    assert len(pack_uints(big)) < 128  # a sparse 65,536-symbol table is zlib'd, not 65,001 bytes
    with pytest.raises(dcz.DczError, match="exceeds the 2-symbol alphabet"):
        unpack_uints(pack_uints(np.array([0, 0, 5])), 2)
    with pytest.raises(dcz.DczError, match="holds 1 bytes"):
        unpack_uints(pack_uints(np.array([1, 2]))[:-1])


def test_huffman_with_incomplete_code_refuses_unused_windows():
    lengths = np.array([1, 0])  # one code, "0"; a "1" bit matches nothing
    assert np.array_equal(huffman.decode(huffman.encode(np.zeros(40, int), lengths), lengths, 40), np.zeros(40))
    data = bytearray(huffman.encode(np.zeros(40, int), lengths))
    data[-1] |= 0x80
    with pytest.raises(dcz.DczError, match="corrupt"):
        huffman.decode(bytes(data), lengths, 40)


def test_ans_refusals():
    if HAS_ANS:
        counts = np.array([90, 10])
        symbols = np.r_[np.zeros(90, int), np.ones(10, int)]
        data = ans.encode(symbols, counts)
        with pytest.raises(dcz.DczError):
            ans.decode(data[:-4], counts, 100)
        with pytest.raises(dcz.DczError, match="count 0"):
            ans.encode([0, 1], [1, 0])
    else:
        with pytest.raises(dcz.DczError, match="install constriction"):
            ans.encode([0, 1], [1, 1])


# --------------------------------------------------------------------------------- container

def _shared(name, shape, zeros, rng, k=16, zero_code=7, scale=False):
    indices = rng.integers(0, k, shape).astype(np.uint8 if k <= 256 else np.uint16)
    indices[rng.random(shape) < zeros] = zero_code
    codebook = np.linspace(-1, 1, k, dtype=np.float32)
    codebook[zero_code] = 0.0
    s = rng.standard_normal(shape[0]).astype(np.float32) if scale else None
    return dcz.SharedTensor(name, codebook, indices, scale=s, zero_code=zero_code)


def _check_decoded(container, tensors):
    for t in tensors:
        got = container.tensors[t.name]
        if isinstance(t, dcz.SharedTensor):
            want = dcz.expand(t.codebook, t.indices, t.scale)
            assert got.dtype == np.float32 and got.shape == t.indices.shape
        else:
            want = t.array
            assert got.dtype == t.array.dtype
        assert np.array_equal(got, want), t.name


@pytest.mark.parametrize("coder", ["huffman", pytest.param("ans", marks=pytest.mark.skipif(not HAS_ANS,
                                                                                           reason="constriction"))])
def test_container_round_trip(tmp_path, coder):
    rng = np.random.default_rng(1)
    tensors = [
        _shared("dense", (64, 32, 3, 3), 0.0, rng),
        _shared("sparse", (128, 64, 3, 3), 0.92, rng, scale=True),
        _shared("big_codebook", (300, 200), 0.5, rng, k=4000, zero_code=1234),
        _shared("empty", (0, 5), 0.5, rng),
        _shared("all_zero", (16, 16), 1.0, rng),
        dcz.SharedTensor("no_zero_code", np.array([0.5, -0.25], np.float32), rng.integers(0, 2, (10, 10))),
        dcz.RawTensor("bias", rng.standard_normal(64).astype(np.float32)),
        dcz.RawTensor("steps", np.array([3, -1], np.int64)),
        dcz.RawTensor("flag", np.array(True)),
        dcz.RawTensor("half", rng.standard_normal((2, 3)).astype(np.float16)),
    ]
    header = {"arch": "resnet18", "labels": ["a", "b"], "nested": {"x": [1, 2.5, None]}}
    graph = bytes(range(256)) * 3
    stats = dcz.write(tmp_path / "m.dcz", header, tensors, graph=graph, coder=coder)
    assert stats.total_bytes == os.path.getsize(tmp_path / "m.dcz")
    loaded = dcz.read(tmp_path / "m.dcz")
    assert loaded.header == header and loaded.graph == graph
    assert list(loaded.tensors) == [t.name for t in tensors]
    _check_decoded(loaded, tensors)
    assert loaded.stats.to_dict() == json.loads(json.dumps(stats.to_dict()))
    assert dcz.read_header(tmp_path / "m.dcz") == header
    layout = {s.name: s.layout for s in stats.tensors}
    assert layout["dense"] == "dense" and layout["bias"] == "raw"
    if coder == "huffman":  # (ANS codes the skewed dense stream about as well: either layout may win)
        assert layout["sparse"] == "sparse"
    assert layout["no_zero_code"] == "dense"
    sparse = next(s for s in stats.tensors if s.name == "sparse")
    assert sparse.scale_bytes == 4 * 128 and sparse.codebook_bytes == 4 * 16
    assert sparse.kept == int(np.count_nonzero(tensors[1].indices != 7))
    if coder == "huffman":  # Huffman vs entropy vs ANS figures, per tensor
        assert 8 * sparse.weights_bytes >= sparse.weights_entropy_bits
        assert (sparse.ans_weights_bytes is not None) == HAS_ANS


def test_sparse_fillers_round_trip(tmp_path):
    """Long zero runs among short ones: the best gap width is small, so the long runs need
    fillers (gap 2^b - 1, zero code), and they decode to the zero code at their positions."""
    rng = np.random.default_rng(2)
    indices = np.full(200_000, 7, np.uint8)
    kept = np.sort(rng.choice(50_000, 20_000, replace=False))  # dense-ish start: short gaps
    kept = np.r_[kept, 120_000, 120_001, 199_998]  # then runs of ~70,000 and ~80,000 zeros
    indices[kept] = rng.choice([0, 3, 9, 15], kept.size)
    codebook = np.linspace(-1, 1, 16, dtype=np.float32)
    codebook[7] = 0.0
    t = dcz.SharedTensor("w", codebook, indices.reshape(400, 500), zero_code=7)
    stats = dcz.write(tmp_path / "f.dcz", {}, [t])
    s = stats.tensors[0]
    assert s.layout == "sparse" and s.index_bits < 16 and s.fillers >= (70_000 >> s.index_bits)
    _check_decoded(dcz.read(tmp_path / "f.dcz"), [t])


@pytest.mark.parametrize("bits", [1, 2, 5, 16])
def test_sparse_streams_with_forced_widths(bits):
    """Fillers are exact for any width: rebuild the positions from gaps as the reader does."""
    from dcz.container import _sparse_streams

    rng = np.random.default_rng(bits)
    flat = np.where(rng.random(5000) < 0.97, 7, rng.integers(0, 16, 5000)).astype(np.uint8)
    flat[:100] = 7  # a leading run
    flat[-1] = 3  # no trailing run
    weights, gaps, fillers = _sparse_streams(flat, 7, bits)
    assert gaps.max() <= (1 << bits) - 1 and fillers == int(np.count_nonzero(weights == 7))
    at = np.cumsum(gaps + 1) - 1
    rebuilt = np.full(flat.size, 7, np.uint8)
    rebuilt[at] = weights
    assert np.array_equal(rebuilt, flat)


def test_layout_selection_by_size(tmp_path):
    rng = np.random.default_rng(3)
    pruned = _shared("pruned", (256, 256, 3, 3), 0.9, rng)
    full = _shared("full", (256, 256, 3, 3), 0.0, rng)
    stats = dcz.write(tmp_path / "s.dcz", {}, [pruned, full])
    by_name = {s.name: s for s in stats.tensors}
    assert by_name["pruned"].layout == "sparse" and by_name["full"].layout == "dense"
    # the same pruned indices without a zero code can only be dense, and cost clearly more
    no_zero = dcz.SharedTensor("pruned", pruned.codebook + 0.01, pruned.indices)
    dense = dcz.write(tmp_path / "d.dcz", {}, [no_zero]).tensors[0]
    assert dense.layout == "dense" and by_name["pruned"].payload_bytes < 0.8 * dense.payload_bytes


def test_float16_exact_vectors_take_two_bytes_and_decode_to_the_same_float32(tmp_path):
    rng = np.random.default_rng(0)
    exact = rng.normal(size=64).astype(np.float16).astype(np.float32)
    exact[:2] = [0.0, -0.0]
    inexact = exact.copy()
    inexact[5] = np.nextafter(inexact[5], np.float32(9))  # one value float16 cannot hold
    idx = rng.integers(0, 4, size=(64, 3))
    tensors = [dcz.RawTensor("b16", exact), dcz.RawTensor("b32", inexact),
               dcz.SharedTensor("w16", np.arange(4, dtype=np.float32), idx, scale=exact),
               dcz.SharedTensor("w32", np.arange(4, dtype=np.float32), idx, scale=inexact)]
    stats = {t.name: t for t in dcz.write(tmp_path / "v.dcz", {}, tensors).tensors}
    assert (stats["b16"].raw_bytes, stats["b32"].raw_bytes) == (128, 256)
    assert (stats["w16"].scale_bytes, stats["w32"].scale_bytes) == (128, 256)
    got = dcz.read(tmp_path / "v.dcz").tensors
    for name, want in (("b16", exact), ("b32", inexact)):
        assert got[name].dtype == np.float32 and got[name].tobytes() == want.tobytes(), name
    for name, scale in (("w16", exact), ("w32", inexact)):
        assert np.array_equal(got[name], dcz.expand(np.arange(4, dtype=np.float32), idx, scale)), name
    assert np.signbit(got["b16"][1]) and not np.signbit(got["b16"][0])


def test_expand_scale_semantics():
    codebook = np.array([0.0, 0.5, -1.5], np.float32)
    indices = np.array([[0, 1], [2, 1], [1, 1]])
    scale = np.array([2.0, -1.0, 0.1], np.float32)
    out = dcz.expand(codebook, indices, scale)
    assert out.dtype == np.float32
    assert np.array_equal(out, (codebook[indices] * scale[:, None]).astype(np.float32))
    with pytest.raises(dcz.DczError, match="outside the codebook"):
        dcz.expand(codebook, np.array([3]))
    with pytest.raises(dcz.DczError, match="outside the codebook"):
        dcz.expand(codebook, np.array([-1]))
    with pytest.raises(dcz.DczError, match="scale"):
        dcz.expand(codebook, indices, scale[:2])


def test_tensor_argument_refusals(tmp_path):
    cb = np.array([0.0, 1.0], np.float32)
    with pytest.raises(dcz.DczError, match="not 0.0"):
        dcz.SharedTensor("w", cb, np.zeros(3, int), zero_code=1)
    with pytest.raises(dcz.DczError, match="indices must be 0 to 1"):
        dcz.SharedTensor("w", cb, np.array([2]))
    with pytest.raises(dcz.DczError, match="65536"):
        dcz.SharedTensor("w", np.zeros(65537, np.float32), np.zeros(3, int))
    with pytest.raises(dcz.DczError, match="occurs twice"):
        dcz.write(tmp_path / "x.dcz", {}, [dcz.RawTensor("a", np.zeros(1)), dcz.RawTensor("a", np.zeros(1))])
    with pytest.raises(dcz.DczError, match="unknown coder"):
        dcz.write(tmp_path / "x.dcz", {}, [], coder="zip")
    assert dcz.SharedTensor("w", cb, np.zeros(3, int)).zero_code == 0  # found in the codebook


def test_write_is_atomic(tmp_path):
    path = tmp_path / "m.dcz"
    dcz.write(path, {"v": 1}, [dcz.RawTensor("a", np.arange(3))])
    before = path.read_bytes()
    with pytest.raises(dcz.DczError, match="JSON"):
        dcz.write(path, {"v": object()}, [dcz.RawTensor("a", np.arange(3))])
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.dcz"]


# ---------------------------------------------------------------------------------- refusals

@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    rng = np.random.default_rng(4)
    tensors = [_shared("w", (16, 8, 3, 3), 0.8, rng, scale=True), dcz.RawTensor("b", np.arange(4, dtype=np.float32))]
    path = tmp_path_factory.mktemp("dcz") / "small.dcz"
    dcz.write(path, {"arch": "tiny"}, tensors, graph=b"GRAPH" * 20)
    data = path.read_bytes()
    (length,) = struct.unpack_from("<I", data, 12)
    return data, 16 + length + 4  # bytes, header end


def _refused(tmp_path, data: bytes, match: str):
    path = tmp_path / "bad.dcz"
    path.write_bytes(data)
    with pytest.raises(dcz.DczError, match=match) as info:
        dcz.read(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    return str(info.value)


def _flip(data: bytes, at: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[at] ^= mask
    return bytes(out)


def test_refuses_wrong_magic_and_version(tmp_path, small_file):
    data, _ = small_file
    _refused(tmp_path, b"PK\x03\x04" + data[4:], "wrong magic")
    _refused(tmp_path, _flip(data, 0), "wrong magic")
    _refused(tmp_path, data[:8] + struct.pack("<H", 2) + data[10:], "version 2")
    _refused(tmp_path, b"", "empty file")


def test_refuses_flipped_bytes_naming_the_part(tmp_path, small_file):
    data, head = small_file
    doc = json.loads(zlib.decompress(data[16:head - 4]))
    w = next(e for e in doc["tensors"] if e["name"] == "w")
    graph_at = head + sum(e["size"] for e in doc["tensors"])
    _refused(tmp_path, _flip(data, 20), "header checksum")
    _refused(tmp_path, _flip(data, head - 30), "header checksum")
    _refused(tmp_path, _flip(data, head - 2), "header checksum")  # the checksum itself
    for at in (0, w["size"] // 2, w["size"] - 1):
        _refused(tmp_path, _flip(data, head + w["offset"] + at, 0x80), "tensor 'w' fails its checksum")
    _refused(tmp_path, _flip(data, graph_at + 3), "graph fails its checksum")
    _refused(tmp_path, _flip(data, len(data) - 1), "graph fails its checksum")


def test_refuses_every_single_flipped_byte(tmp_path, small_file):
    data, _ = small_file
    path = tmp_path / "bad.dcz"
    for at in range(len(data)):
        path.write_bytes(_flip(data, at, 0x10))
        with pytest.raises(dcz.DczError):
            dcz.read(path)


def test_refuses_truncated_and_trailing(tmp_path, small_file):
    data, head = small_file
    for cut in (3, 8, 15, 16, 40, head - 4, head - 1, head, head + 10, len(data) - 1):
        _refused(tmp_path, data[:cut], "truncated")
    _refused(tmp_path, data + b"\0", "1 trailing bytes")
    _refused(tmp_path, data + data, "trailing bytes")
    path = tmp_path / "bad.dcz"
    path.write_bytes(data[:head + 10])
    with pytest.raises(dcz.DczError, match="truncated"):
        dcz.read_header(path)


def test_refuses_a_consistent_but_lying_directory(tmp_path, small_file):
    """A header that passes its checksum but describes the data wrongly (a writer bug or a
    crafted file) is refused, never decoded into garbage or an exception other than DczError."""
    data, head = small_file
    doc = json.loads(zlib.decompress(data[16:head - 4]))
    payload = data[head:]

    def rewrite(change):
        d = json.loads(json.dumps(doc))
        change(d)
        text = zlib.compress(json.dumps(d, separators=(",", ":")).encode())
        prelude = MAGIC + struct.pack("<HHI", 1, 0, len(text)) + text
        return prelude + struct.pack("<I", zlib.crc32(prelude)) + payload

    _refused(tmp_path, rewrite(lambda d: d["tensors"][0].update(shape=[16, 8, 3, 4])), "corrupt directory")
    _refused(tmp_path, rewrite(lambda d: d["tensors"][0].update(alphabet=17)), "does not decode")
    _refused(tmp_path, rewrite(lambda d: d["tensors"][0].update(entries=d["tensors"][0]["entries"] + 1)),
             "does not decode")
    _refused(tmp_path, rewrite(lambda d: d["tensors"][1].update(dtype="|O")), "does not decode")


# ---------------------------------------------------------------------------------- torch-free

def test_dcz_imports_only_numpy_and_the_standard_library(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "compress", "onnx", "onnxruntime", "constriction", "bitarray"):
                    raise ImportError("dcz imported " + name)
        sys.meta_path.insert(0, Block())
        import numpy as np, dcz
        t = dcz.SharedTensor("w", np.array([0.0, 1.0], np.float32), np.array([[0, 1], [1, 0]]))
        dcz.write({str(tmp_path / "m.dcz")!r}, {{}}, [t])
        assert dcz.read({str(tmp_path / "m.dcz")!r}).stats.tensors[0].ans_weights_bytes is None
        try:
            dcz.write({str(tmp_path / "n.dcz")!r}, {{}}, [t], coder="ans")
        except dcz.DczError as e:
            assert "install constriction" in str(e)
        else:
            raise AssertionError("ans without constriction")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr[-2000:]
