"""Compare latency, size and accuracy of model variants on this CPU.

Inputs are model artifacts (.safetensors: PyTorch eager, plus torch.compile with --compile) and
ONNX files (ONNX Runtime; int8 models too), in any mix; the first is the baseline every ratio
refers to. For each batch size x thread count all variants are warmed up, then timed
interleaved (A B C A B C ...) until the time budget is spent, so drift on a shared CPU hits them
alike. Reported: p50/p90/p99 latency per batch (ms), IQR, images/s, speedup over the baseline,
achieved GMAC/s; params, MACs, file size; with --data, accuracy and agreement with the baseline.

    compress bench base.safetensors base.onnx base.int8.onnx --batch 1,8 --threads 1,2
    compress bench base.onnx pruned.onnx --data digits --out runs/bench
    compress bench mobilenet_v2.safetensors mobilenet_v2.onnx --input-size 224 -o runs/mnv2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", help="model files: .safetensors artifacts and/or .onnx models; "
                                             "the first is the baseline")
    p.add_argument("--batch", default="1", help="batch sizes, comma-separated (default 1)")
    p.add_argument("--threads", default=None, help="intra-op thread counts, comma-separated "
                                                   "(default: the cores this process may use)")
    p.add_argument("--input-size", type=int, help="square side to time at, e.g. 224 (default: each model's "
                                                  "training size)")
    p.add_argument("--data", help="data set for accuracy and agreement with the baseline, e.g. digits")
    p.add_argument("--data-limit", type=int, help="use at most this many test images")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the train/val/test split (default 0, "
                                                            "as in compress train)")
    p.add_argument("--compile", action="store_true", help="also time each .safetensors model with torch.compile")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs per variant per cell (default 3)")
    p.add_argument("--min-runs", type=int, default=10, help="timed runs per variant per cell, at least "
                                                            "(default 10)")
    p.add_argument("--budget", type=float, default=2.0, help="timing seconds per variant per cell (default 2)")
    p.add_argument("--ort-spinning", action="store_true",
                   help="let ONNX Runtime threads busy-wait between runs (faster alone, unfair to the "
                        "variant timed next; default off)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--out", help="folder for bench.json, bench.csv, bench.png")
    out.add_argument("-o", "--output", help="prefix for PREFIX.json, PREFIX.csv, PREFIX.png")
    p.add_argument("--no-plot", dest="plot", action="store_false", help="skip the PNG plot")


def parse_int_list(text: str, what: str) -> list[int]:
    """'1,8' → [1, 8]; every value must be a positive integer."""
    values = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            v = int(part)
        except ValueError:
            raise UserError(f"--{what}: {part!r} is not an integer (give a comma-separated list like 1,8)") from None
        if v < 1:
            raise UserError(f"--{what}: values must be >= 1, got {v}")
        values.append(v)
    if not values:
        raise UserError(f"--{what}: empty list")
    return list(dict.fromkeys(values))


def run(args: argparse.Namespace) -> int:
    import os
    import warnings

    # PyTorch's OpenMP workers busy-wait at every barrier by default; on a CPU shared with other
    # jobs that makes multi-threaded eager inference 10-50x slower (measured: MobileNetV2-224,
    # 2 threads, load 8 on 2 cores: 3000 ms vs 65 ms with PASSIVE). ONNX Runtime's spinning is
    # off by default here too, so neither engine busy-waits. Must be set before torch is
    # imported; set OMP_WAIT_POLICY yourself to override.
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from ..sysinfo import usable_cores

    batches = parse_int_list(args.batch, "batch")
    threads = parse_int_list(args.threads if args.threads is not None else str(usable_cores()), "threads")
    if args.warmup < 0:
        raise UserError(f"--warmup must be >= 0, got {args.warmup}")
    if args.data_limit is not None and args.data_limit < 1:
        raise UserError(f"--data-limit must be >= 1, got {args.data_limit}")
    for m in args.models:
        if not Path(m).exists():
            raise UserError(f"{m}: no such file")
    prefix = None
    if args.out:
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise UserError(f"--out {args.out} is a file; give a folder (or use -o PREFIX)")
        prefix = Path(args.out) / "bench"
    elif args.output:
        prefix = Path(args.output)
        for suffix in (".json", ".csv", ".png"):
            if prefix.suffix == suffix:
                prefix = prefix.with_suffix("")
    if prefix is not None:
        for m in args.models:
            for suffix in (".json", ".csv", ".png"):
                if Path(m).resolve() == prefix.with_name(prefix.name + suffix).resolve():
                    raise UserError(f"output {prefix}{suffix} would overwrite input {m}")

    from ..bench import format_report, run_benchmark, write_report

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = run_benchmark(args.models, batches=batches, threads=threads, input_size=args.input_size,
                               data=args.data, data_limit=args.data_limit, data_seed=args.data_seed,
                               compile=args.compile,
                               warmup=args.warmup, min_runs=args.min_runs, budget_s=args.budget,
                               ort_spinning=args.ort_spinning,
                               progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    shown = set(report.warnings)
    for w in caught:  # library warnings not already in the report (e.g. from data loading)
        msg = str(w.message)
        if msg not in shown and not issubclass(w.category, (DeprecationWarning, FutureWarning)):
            report.warnings.append(msg)
            shown.add(msg)
    report.config["command"] = _command_line(args, batches, threads)
    print(format_report(report))
    if prefix is not None:
        written = write_report(report, prefix, plot=args.plot)
        print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _command_line(args: argparse.Namespace, batches: list[int], threads: list[int]) -> str:
    """The resolved command, so a result can be reproduced."""
    parts = ["compress", "bench", *args.models, "--batch", ",".join(map(str, batches)),
             "--threads", ",".join(map(str, threads)), "--warmup", str(args.warmup),
             "--min-runs", str(args.min_runs), "--budget", str(args.budget)]
    if args.input_size:
        parts += ["--input-size", str(args.input_size)]
    if args.data:
        parts += ["--data", args.data]
    if args.data_limit:
        parts += ["--data-limit", str(args.data_limit)]
    if args.data and args.data_seed:
        parts += ["--data-seed", str(args.data_seed)]
    for flag in ("compile", "ort_spinning"):
        if getattr(args, flag):
            parts.append("--" + flag.replace("_", "-"))
    return " ".join(parts)
