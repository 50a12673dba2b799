"""Huffman-code a model into a .dcz container (Deep Compression's storage, Han et al. 2016), or
decode one.

encode: every conv/linear weight is stored as a codebook plus entropy-coded indices — the k-means
codebook of `compress quantize --kmeans-bits`, else a linear 8-bit (--linear-bits) per-tensor
quantization made here. Zeros from unstructured pruning (`compress prune --sparsity`) are left out:
the kept weights' positions are stored as Huffman-coded gaps (with filler zeros when a gap exceeds
the index width, chosen per tensor). BatchNorm is folded into the convolution before it. The
container also holds the ONNX graph without its weights, so `compress serve model.dcz` (and
`python -m serve model.dcz`) runs it with numpy and ONNX Runtime alone. The decoded model is
measured on the data set the model was trained on; the table follows Deep Compression's
(weights kept, bits per weight before/after Huffman, index bits, ratio to fp32).

    compress prune base.safetensors --sparsity 0.9 --global --finetune 4 -o s.safetensors
    compress quantize s.safetensors --kmeans-bits 4 --finetune 2 -o k.safetensors
    compress huffman encode k.safetensors -o model.dcz
    compress huffman encode base.safetensors --coder ans -o base.dcz    # linear 8-bit + ANS
    compress huffman decode model.dcz -o decoded.safetensors            # or -o decoded.onnx
    compress huffman info model.dcz                                     # the size table of a file

A JSON report is written next to the encoded output (OUTPUT.json).
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..cli import _Parser
    from ..huffman.config import HuffmanConfig

    sub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser, required=True)
    enc = sub.add_parser("encode", help="model artifact (.safetensors) -> .dcz",
                         description="Encode a model artifact (.safetensors, pruned and/or k-means shared) into "
                                     "a .dcz container and measure the decoded model.")
    enc.add_argument("model", help="model artifact (.safetensors)")
    enc.add_argument("-o", "--output", required=True, help="container to write (.dcz)")
    enc.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    HuffmanConfig.add_arguments(enc)
    dec = sub.add_parser("decode", help=".dcz -> .safetensors or .onnx",
                         description="Decode a .dcz container into a model artifact (.safetensors: the same "
                                     "architecture, BatchNorm folded) or an ONNX file (.onnx).")
    dec.add_argument("container", help="the .dcz file")
    dec.add_argument("-o", "--output", required=True, help="output: .safetensors or .onnx")
    info = sub.add_parser("info", help="the size table of a .dcz file",
                          description="Read a .dcz container (checksums verified) and print its size table.")
    info.add_argument("container", help="the .dcz file")


def run(args: argparse.Namespace) -> int:
    from ..report.huffman import format_encode, format_stats

    if args.action == "encode":
        from ..huffman.api import encode_artifact
        from ..huffman.config import HuffmanConfig

        cfg = HuffmanConfig.from_args(args)
        log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
        result = encode_artifact(args.model, args.output, cfg, log=log)
        print(format_encode(result))
        print(f"wrote {result.output} and {result.report_path}")
        return 0
    if args.action == "decode":
        from ..huffman.api import decode_artifact

        result = decode_artifact(args.container, args.output)
        print(f"wrote {result.output} ({result.bytes_out:,} bytes from {result.bytes_in:,}) in {result.seconds:.2f} s")
        return 0
    from ..huffman.api import read_container

    container = read_container(args.container)
    print(format_stats(container.stats.to_dict(), container.header))
    return 0
