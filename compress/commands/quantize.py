"""Quantize a model: INT8 for ONNX Runtime, chosen by measurement on this CPU, or Deep
Compression's k-means weight sharing.

Static INT8 (input .onnx, or .safetensors exported first; output .onnx). By default a search:
every structure (QDQ/QOperator x S8S8/U8S8 x per-channel/per-tensor) is timed here interleaved
with the fp32 model, then, fastest first, each calibration (MinMax, Entropy, Percentile), as is
and with bias correction (the mean output shift of INT8 weight rounding taken out of the biases),
is scored by top-1 agreement with the fp32 model on held-out images; the fastest candidate with agreement
>= --min-agreement is written, with the table of what was tried. If none passes, the nodes that
lose the most signal to quantization stay in float (up to --max-exclude) and it tries again; if
still none passes it says so, exits 1 and writes nothing. Calibration images come from the
model's training data (or --calib), preprocessed exactly as the service preprocesses uploads.
Given a .safetensors artifact, a search that finds nothing falls back to quantization-aware
training (--qat auto): fine-tuning with INT8 simulated, distilled from the fp32 model, then
quantized by ONNX Runtime like the others; --qat on always fine-tunes, --qat off never does.

    compress quantize base.onnx --int8 -o base.int8.onnx
    compress quantize base.safetensors --int8 --calib fashion-mnist --min-agreement 0.995 -o q.onnx
    compress quantize base.onnx --int8 --format qdq --types s8s8 --calibration entropy -o q.onnx
    compress quantize base.onnx --int8 --input-size 224 --batch 8 -o q.onnx   # time where you deploy
    compress quantize base.onnx --dynamic -o base.dyn.onnx
    compress quantize base.safetensors --int8 --qat on --qat-epochs 3 -o base.qat.int8.onnx

k-means weight sharing (input and output .safetensors; codebook + uint8 indices per layer, for
the Huffman stage; the shared centroids are fine-tuned, distilled from the input model):

    compress quantize base.safetensors --kmeans-bits 4 -o base.k4.safetensors
    compress quantize pruned.safetensors --kmeans-bits 5 --fc-bits 4 --finetune 3 -o k.safetensors

A JSON report is written next to the output (OUTPUT.json).
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..quantize.config import QuantizeConfig

    p.add_argument("model", help="model file: .onnx or .safetensors (INT8), .safetensors (k-means)")
    p.add_argument("-o", "--output", required=True, help="output file (.onnx for INT8, .safetensors for k-means)")
    p.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    QuantizeConfig.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..quantize.config import QuantizeConfig

    cfg = QuantizeConfig.from_args(args)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    if cfg.mode() == "kmeans":
        from ..quantize.kmeans import kmeans_artifact
        from ..report.kmeans import format_kmeans

        result = kmeans_artifact(args.model, args.output, cfg, log=log, progress=not args.quiet)
        print(format_kmeans(result))
        print(f"wrote {result.output} and {result.report_path}")
        return 0
    from ..quantize.api import quantize_artifact
    from ..quantize.int8 import QuantizationRefused
    from ..report.quantize import format_quantize

    try:
        result = quantize_artifact(args.model, args.output, cfg, log=log)
    except QuantizationRefused as e:
        if e.result is not None:
            print(format_quantize(e.result))
        raise
    print(format_quantize(result))
    print(f"wrote {result.output} and {result.report_path}")
    return 0
