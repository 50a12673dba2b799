"""Speed and size of the ``.dcz`` coders on ResNet-18-sized weights (11.7M), no torch needed.

    .venv/bin/python scripts/bench_dcz.py [--repeat 3] [--zeros 0.9] [--no-bitarray]

The weights are synthetic but shaped like a Deep Compression model: ResNet-18's conv/fc shapes,
4-bit k-means indices (16 codes, the one for 0.0 taking ``--zeros`` of all weights after
pruning, the 15 others Laplace-like around it). Prints, best of ``--repeat`` runs (seconds):

* the Huffman codec alone on all 11.7M indices as one stream: numpy (``dcz.huffman``) against
  bitarray's C canonical decoder (``bitarray.util.canonical_decode``) when bitarray is installed;
* ``dcz.write`` / ``dcz.read`` of the whole model (layout chosen per tensor), with the file
  size against the entropy bound and ANS.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dcz
from dcz import huffman

RESNET18 = [("conv1", (64, 3, 7, 7))]
for stage, (cin, cout) in enumerate([(64, 64), (64, 128), (128, 256), (256, 512)], start=1):
    for block in range(2):
        first = cin if block == 0 else cout
        RESNET18 += [(f"layer{stage}.{block}.conv1", (cout, first, 3, 3)),
                     (f"layer{stage}.{block}.conv2", (cout, cout, 3, 3))]
        if block == 0 and stage > 1:
            RESNET18.append((f"layer{stage}.0.downsample", (cout, cin, 1, 1)))
RESNET18.append(("fc", (1000, 512)))
ZERO_CODE = 7


def synthetic_indices(shape, zeros: float, rng) -> np.ndarray:
    """4-bit indices: ZERO_CODE with probability ``zeros``, else one of the 15 other codes."""
    others = np.r_[0:ZERO_CODE, ZERO_CODE + 1:16]
    p = np.exp(-np.abs(others - ZERO_CODE) / 3.0)
    n = int(np.prod(shape))
    idx = rng.choice(others, size=n, p=p / p.sum()).astype(np.uint8)
    idx[rng.random(n) < zeros] = ZERO_CODE
    return idx.reshape(shape)


def best_of(repeat: int, fn):
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def bench_codec(symbols: np.ndarray, repeat: int, with_bitarray: bool) -> None:
    counts = np.bincount(symbols)
    lengths = huffman.code_lengths(counts)
    n = symbols.size
    t_enc, data = best_of(repeat, lambda: huffman.encode(symbols, lengths))
    t_dec, back = best_of(repeat, lambda: huffman.decode(data, lengths, n))
    assert np.array_equal(back, symbols)
    print(f"one stream of {n / 1e6:.1f}M symbols over {int(np.count_nonzero(counts))} symbols, "
          f"{8 * len(data) / n:.3f} bits/symbol "
          f"(entropy {huffman.entropy_bits(counts) / n:.3f})")
    print(f"  numpy     encode {t_enc:6.3f} s   decode {t_dec:6.3f} s")
    if not with_bitarray:
        return
    try:
        from bitarray import bitarray
        from bitarray.util import canonical_decode
    except ImportError:
        print("  bitarray  not installed")
        return
    codes = huffman.canonical_codes(lengths)
    code_dict = {int(s): bitarray(format(int(codes[s]), f"0{int(lengths[s])}b"))
                 for s in np.flatnonzero(lengths)}
    order = np.flatnonzero(lengths)[np.argsort(lengths[np.flatnonzero(lengths)], kind="stable")]
    per_length = np.bincount(lengths[order], minlength=int(lengths.max()) + 1).tolist()

    def ba_encode():
        a = bitarray(endian="big")
        a.encode(code_dict, symbols.tolist())
        return a

    t_benc, a = best_of(repeat, ba_encode)
    t_bdec, back = best_of(repeat, lambda: np.fromiter(canonical_decode(a, per_length, order.tolist()),
                                                         symbols.dtype, n))
    assert np.array_equal(back, symbols)
    print(f"  bitarray  encode {t_benc:6.3f} s   decode {t_bdec:6.3f} s")


def bench_container(tensors, repeat: int, coder: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.dcz")
        t_w, stats = best_of(repeat, lambda: dcz.write(path, {"arch": "resnet18"}, tensors, coder=coder))
        t_r, loaded = best_of(repeat, lambda: dcz.read(path))
    for t in tensors:
        want = dcz.expand(t.codebook, t.indices, t.scale) if isinstance(t, dcz.SharedTensor) else t.array
        assert np.array_equal(loaded.tensors[t.name], want)
    n = sum(int(np.prod(t.indices.shape)) for t in tensors if isinstance(t, dcz.SharedTensor))
    d = stats.to_dict()["total"]
    layouts = {}
    for t in stats.tensors:
        layouts[t.layout] = layouts.get(t.layout, 0) + 1
    print(f"dcz.write/read, {len(tensors)} tensors, {n / 1e6:.1f}M weights, coder {coder}, layouts {layouts}")
    print(f"  write {t_w:6.3f} s   read {t_r:6.3f} s   file {stats.total_bytes / 1e6:.3f} MB "
          f"= {8 * stats.total_bytes / n:.3f} bits/weight")
    print(f"  streams: coded {d['stream_bytes'] / 1e6:.3f} MB, entropy bound {d['entropy_bytes'] / 1e6:.3f} MB"
          + (f", ANS {d['ans_stream_bytes'] / 1e6:.3f} MB" if d["ans_stream_bytes"] is not None else ""))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--zeros", type=float, default=0.9, help="fraction of weights pruned to 0")
    parser.add_argument("--no-bitarray", dest="bitarray", action="store_false")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    indices = {name: synthetic_indices(shape, args.zeros, rng) for name, shape in RESNET18}
    flat = np.concatenate([i.reshape(-1) for i in indices.values()])
    bench_codec(flat, args.repeat, args.bitarray)
    # a wide alphabet: 2M gaps of a 2^16-symbol alphabet (geometric, mean 100)
    bench_codec(np.minimum(rng.geometric(0.01, 2_000_000) - 1, 65535).astype(np.uint16), args.repeat, args.bitarray)
    codebook = np.linspace(-0.35, 0.35, 16, dtype=np.float32)
    codebook[ZERO_CODE] = 0.0
    tensors = [dcz.SharedTensor(name, codebook, idx, zero_code=ZERO_CODE) for name, idx in indices.items()]
    tensors.append(dcz.RawTensor("fc.bias", rng.standard_normal(1000).astype(np.float32)))
    for coder in ("huffman", "ans"):
        bench_container(tensors, args.repeat, coder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
