"""Latency, size and accuracy of model variants, measured so that the comparison is honest.

Variants are model artifacts (``.safetensors`` → PyTorch eager, optionally ``torch.compile``)
and ONNX files (→ ONNX Runtime on CPU; int8 models are just ONNX models), in any mix.

    variants.py   a file → Variant (engine, size, params, MACs) and its runner
    accuracy.py   accuracy on a data set's test split, agreement with the baseline
    api.py        BenchConfig → run_benchmark → BenchReport (the stage behind ``compress bench``)

Timing itself is :mod:`compress.runtime` (torch-free); tables, files and plots are
:mod:`compress.report.bench`.
"""
from .api import BenchConfig, BenchReport, run_benchmark

__all__ = ["BenchConfig", "BenchReport", "run_benchmark"]
