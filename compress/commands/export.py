"""Export a model artifact to ONNX, verified against PyTorch.

The ONNX file has dynamic batch, height and width axes (--static-shape fixes H and W),
BatchNorm folded into the convolutions, and the model facts (labels, mean/std, input size, task,
history) in its metadata_props. ONNX Runtime's outputs are compared with PyTorch's on real
images (the test split of --data, or of the data set the model was trained on when its history
names one, else random inputs); the export fails above --tol (max abs logit difference).
A JSON report is written next to the output (OUTPUT.json).

Graph outputs: 'logits' (N, classes) and, unless --no-embedding, 'embedding' (N, D) float32, the
pooled features before the final Linear (not normalised; metadata embedding_output and
embedding_dim), for embeddings and few-shot classes without torch (compress embed / fewshot, the
service's /v1/classes). It costs no measurable time (see compress/export.py).

    compress export base.safetensors -o base.onnx
    compress export pruned.safetensors -o pruned.onnx --opset 17 --data digits
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..export import ExportConfig

    p.add_argument("model", help="model artifact (.safetensors)")
    p.add_argument("-o", "--output", help="ONNX file to write (default: the model's name with .onnx)")
    ExportConfig.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..export import ExportConfig, export_artifact
    from ..report.export import format_export

    cfg = ExportConfig.from_args(args)
    print(format_export(export_artifact(args.model, args.output, cfg), cfg.static_shape))
    return 0
