"""Compare latency, size and accuracy of model variants on this CPU.

Inputs are model artifacts (.safetensors: PyTorch eager, plus torch.compile with --compile) and
ONNX files (ONNX Runtime; int8 models too), in any mix; the first is the baseline every ratio
refers to. --peers also runs every ONNX file in OpenVINO (pip install -e '.[peers]'):
"openvino" with its defaults (bfloat16 on CPUs that have it), "openvino-f32" held to fp32.
For each batch size x thread count all variants are warmed up, then timed in turns of about
--block-ms (AAAA BBBB CCCC AAAA ...) until the time budget is spent, so drift on a shared CPU hits
them alike while each run finds the caches warm, as in a service running one model.
Reported: p50/p90/p99 latency per batch (ms), IQR, images/s, speedup over the baseline, achieved
GMAC/s; engine, the precision it really computes in, params, MACs, file size; with --data,
accuracy and agreement with the baseline.

    compress bench base.safetensors base.onnx base.int8.onnx --batch 1,8 --threads 1,2
    compress bench base.onnx pruned.onnx --data digits --out runs/bench
    compress bench mobilenet_v2.safetensors mobilenet_v2.onnx --input-size 224 -o runs/mnv2
    compress bench base.onnx base.int8.onnx --peers openvino,openvino-f32 --data digits
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from ..bench.api import BenchConfig
from ..errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", help="model files: .safetensors artifacts and/or .onnx models; "
                                             "the first is the baseline")
    BenchConfig.add_arguments(p)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--out", help="folder for bench.json, bench.csv, bench.png")
    out.add_argument("-o", "--output", help="prefix for PREFIX.json, PREFIX.csv, PREFIX.png")


def _prefix(args: argparse.Namespace) -> Path | None:
    if args.out:
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise UserError(f"--out {args.out} is a file; give a folder (or use -o PREFIX)")
        return Path(args.out) / "bench"
    if args.output:
        prefix = Path(args.output)
        return prefix.with_suffix("") if prefix.suffix in (".json", ".csv", ".png") else prefix
    return None


def run(args: argparse.Namespace) -> int:
    # PyTorch's OpenMP workers busy-wait at every barrier by default; on a CPU shared with other
    # jobs that makes multi-threaded eager inference 10-50x slower (measured: MobileNetV2-224,
    # 2 threads, load 8 on 2 cores: 3000 ms vs 65 ms with PASSIVE). Must be set before torch is
    # imported; set OMP_WAIT_POLICY yourself to override.
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from ..bench.api import run_benchmark
    from ..io import check_outputs
    from ..report.bench import format_report, report_paths, write_report

    cfg = BenchConfig.from_args(args)
    prefix = _prefix(args)
    if prefix is not None:
        check_outputs(report_paths(prefix, plot=cfg.plot), args.models)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = run_benchmark(args.models, cfg, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    for w in caught:  # library warnings not already in the report (e.g. from data loading)
        msg = str(w.message)
        if msg not in report.warnings and not issubclass(w.category, (DeprecationWarning, FutureWarning)):
            report.warnings.append(msg)
    print(format_report(report))
    if prefix is not None:
        print("wrote " + ", ".join(str(p) for p in write_report(report, prefix, plot=cfg.plot)))
    return 0
