"""Where the time goes: ONNX Runtime's per-node profile of two models, by kind of layer, next to
the MACs of each kind. It answers "why did MACs fall 3.5x but latency only 1.8x" for a pruning
run (README, "Fashion-MNIST").

    .venv/bin/python scripts/latency_breakdown.py BEFORE.safetensors AFTER.safetensors \\
        [--size 224] [--imagenet-stem] [--runs 200] [--threads 2]
    .venv/bin/python scripts/latency_breakdown.py fp32.onnx int8.onnx --size 224

Artifacts are exported to ONNX (the pruned widths with the ImageNet stem when --imagenet-stem,
as `compress prune --bench-imagenet-stem` times them); ONNX files (INT8 ones too) are run as they
are. Both run in turns of 10 runs, batch 1, threads spinning within a run (as `compress bench`),
with ORT's profiler on; each node's kernel time is averaged over the runs and summed by kind.
ORT's profile gives no weight shapes for INT8 kernels (their weights are prepacked), so INT8
convolutions show as one kind, "other: QLinearConv", and QGemm as the classifier, without MACs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def kind_and_macs(args: dict) -> tuple[str, int]:
    """The kind of an ORT kernel event (conv by its weight's shape) and its MACs per image."""
    op = args.get("op_name", "?")
    shapes = [next(iter(t.values())) for t in args.get("input_type_shape", [])]
    out = [next(iter(t.values())) for t in args.get("output_type_shape", [])]
    if op in ("Conv", "FusedConv", "NhwcFusedConv") and len(shapes) > 1 and len(shapes[1]) == 4 and out:
        w = shapes[1]
        macs = int(np.prod(w)) * int(out[0][2]) * int(out[0][3])
        kind = "depthwise conv" if w[1] == 1 and w[2] > 1 else \
            ("pointwise (1x1) conv" if w[2:] == [1, 1] else "full conv (stem)")
        return kind, macs
    if op in ("Gemm", "FusedGemm", "MatMul") and len(shapes) > 1:
        return "classifier (Gemm)", int(np.prod(shapes[1]))
    if op == "QGemm":  # prepacked weights: no shape in the profile, so no MACs
        return "classifier (Gemm)", 0
    return f"other: {op}", 0


def profile(paths: list[Path], size: int, runs: int, threads: int, workdir: Path) -> list[dict]:
    """Per model: {kind: [mean kernel µs per run, MACs per image, nodes]} and the end-to-end
    median ms (key ``wall_ms``), the models run alternately with ORT's profiler on."""
    import time

    import onnxruntime as ort

    sessions = []
    for k, p in enumerate(paths):
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.enable_profiling = True
        so.profile_file_prefix = str(workdir / f"profile{k}")
        so.add_session_config_entry("session.intra_op.allow_spinning", "1")
        so.add_session_config_entry("session.force_spinning_stop", "1")
        sessions.append(ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]))
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    warmup, block = 20, 10
    walls: list[list[float]] = [[] for _ in paths]
    for i in range(0, runs + warmup, block):
        for k, s in enumerate(sessions):
            for j in range(i, min(i + block, runs + warmup)):
                t = time.perf_counter()
                s.run(None, {s.get_inputs()[0].name: x})
                if j >= warmup:
                    walls[k].append((time.perf_counter() - t) * 1e3)
    result = []
    for k, s in enumerate(sessions):
        events = [e for e in json.loads(Path(s.end_profiling()).read_text())
                  if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
        per_run = len(events) // (runs + warmup)
        rows: dict = defaultdict(lambda: [0.0, 0, 0])
        for j, e in enumerate(events[warmup * per_run:]):
            kind, macs = kind_and_macs(e.get("args", {}))
            rows[kind][0] += e["dur"] / runs
            if j < per_run:  # one run's worth of nodes
                rows[kind][1] += macs
                rows[kind][2] += 1
        result.append({"kinds": dict(rows), "wall_ms": float(np.median(walls[k]))})
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before"), ap.add_argument("after")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--imagenet-stem", action="store_true")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    from compress.artifact import load_model
    from compress.prune.measure import export_for_timing, imagenet_stem_twin
    from compress.runtime import time_onnx_interleaved

    with tempfile.TemporaryDirectory(prefix="breakdown-") as tmp:
        paths = []
        for name, src in (("before", a.before), ("after", a.after)):
            if src.endswith(".onnx"):
                paths.append(Path(src))
                continue
            model, meta = load_model(src)
            if a.imagenet_stem:
                model, meta = imagenet_stem_twin(model, meta)
            paths.append(export_for_timing(model.eval(), meta, a.size, Path(tmp) / f"{name}.onnx"))
        plain = time_onnx_interleaved(paths, a.size, batch=1, threads=a.threads, runs=a.runs)
        profiles = profile(paths, a.size, a.runs, a.threads, Path(tmp))
    kinds = sorted(set(profiles[0]["kinds"]) | set(profiles[1]["kinds"]),
                   key=lambda k: -profiles[0]["kinds"].get(k, [0])[0])
    zero = [0.0, 0, 0]
    total = [sum(r[0] for r in p["kinds"].values()) for p in profiles]
    print("| kind | nodes | ms before | ms after | time ratio | MMACs before | MMACs after | MACs ratio | "  # MACs as ORT runs them
          "share of time after |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind in kinds:
        b, f = profiles[0]["kinds"].get(kind, zero), profiles[1]["kinds"].get(kind, zero)
        tr = f"{f[0] / b[0]:.2f}x" if b[0] else "-"
        mr = f"{f[1] / b[1]:.2f}x" if b[1] else "-"
        print(f"| {kind} | {b[2]} | {b[0] / 1e3:.3f} | {f[0] / 1e3:.3f} | {tr} | {b[1] / 1e6:.1f} | {f[1] / 1e6:.1f} | "
              f"{mr} | {f[0] / total[1]:.0%} |")
    mt = [sum(r[1] for r in p["kinds"].values()) for p in profiles]
    print(f"| all kernels | | {total[0] / 1e3:.3f} | {total[1] / 1e3:.3f} | {total[1] / total[0]:.2f}x | "
          f"{mt[0] / 1e6:.1f} | {mt[1] / 1e6:.1f} | {mt[1] / mt[0]:.2f}x | |")
    w = [profiles[0]["wall_ms"], profiles[1]["wall_ms"]]
    print(f"\nend to end, median of {a.runs} interleaved runs, batch 1, {a.threads} threads: "
          f"{plain[0].p50_ms:.3f} → {plain[1].p50_ms:.3f} ms ({plain[1].p50_ms / plain[0].p50_ms:.2f}x); "
          f"with the profiler on {w[0]:.3f} → {w[1]:.3f} ms ({w[1] / w[0]:.2f}x)")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
