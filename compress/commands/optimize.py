"""Find the fastest (or smallest) variant of a trained model within an accuracy budget, by building
and measuring candidates on this CPU.

    compress optimize base.safetensors --max-drop 1.0 --objective latency -o opt/
    compress optimize base.safetensors --objective latency --input-size 224 --imagenet-stem -o opt224/
    compress optimize base.safetensors --objective size --sparsities 0.7,0.85 --bits 4,5 -o optsize/

latency: depth pruning (--blocks: residual blocks out) x width pruning (--ratios), each fine-tuned
with distillation from the input model; each also as ONNX Runtime static INT8; every variant timed
at 1..--threads threads, interleaved with the input model's ONNX Runtime fp32 in one run.
size: unstructured sparsity (--sparsities) x k-means bits (--bits), Huffman-coded (.dcz).

Accuracy is measured on the validation split while searching; the test split only for the
report. Writes OUT/optimize.json, OUT/frontier.png, the chosen variant (chosen.safetensors,
chosen.onnx or chosen.dcz) and OUT/recipe.yaml, a `compress pipeline` recipe that rebuilds it.
Finished candidates are kept under OUT/candidates: run the same command again to resume.
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..optimize.config import OptimizeConfig

    p.add_argument("model", help="trained model artifact (.safetensors)")
    p.add_argument("-o", "--output", required=True, help="output folder (candidates, report, chosen variant)")
    p.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    OptimizeConfig.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..optimize.api import optimize
    from ..optimize.config import OptimizeConfig
    from ..report.optimize import format_optimize

    cfg = OptimizeConfig.from_args(args)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    result = optimize(args.model, args.output, cfg, log=log, progress=not args.quiet)
    print(format_optimize(result))
    print("wrote " + ", ".join(v for k, v in result.files.items()))
    return 0
