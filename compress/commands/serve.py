"""Serve ONNX models over HTTP: FastAPI + ONNX Runtime, started with uvicorn.

The service itself is the torch-free `serve` package (also `python -m serve MODEL.onnx`, which
works with the base install only); this command is the same thing under the compress CLI.
Preprocessing (input size, mean/std, interpolation), labels, task and the compression history
come from the ONNX file's metadata (`compress export` writes them).

    compress serve runs/demo/base_onnx.onnx --port 8000
    compress serve --model digits=base.onnx --model pruned=pruned.onnx --workers 2 --threads 1
    compress serve base.onnx --max-batch 8 --max-wait-ms 2 --host 0.0.0.0 --api-key "$KEY"
    compress serve model.dcz          # a Huffman-coded container (compress huffman encode), decoded at start

API: POST /predict (image → top-k labels, timing_ms and a Server-Timing header),
POST /predict/batch, Open Inference Protocol v2 under /v2 (KServe / Triton REST clients),
GET /healthz, /readyz, /model, /models, /metrics (Prometheus), /docs (OpenAPI).
"""
from __future__ import annotations

import argparse

from ..errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from serve.cli import add_arguments as serve_arguments

    serve_arguments(p)


def run(args: argparse.Namespace) -> int:
    from serve.cli import run as serve_run

    try:
        return serve_run(args)
    except ValueError as e:  # serve's one-line errors: bad option, unreadable model, port taken
        raise UserError(str(e)) from None
