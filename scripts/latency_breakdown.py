"""Where the time goes: ONNX Runtime's per-node profile of two models, by kind of layer, next to
the MACs of each kind. It answers "why did MACs fall 3.5x but latency only 1.8x" for a pruning
run (README, "Fashion-MNIST").

    .venv/bin/python scripts/latency_breakdown.py BEFORE.safetensors AFTER.safetensors \\
        [--size 224] [--imagenet-stem] [--runs 200] [--threads 2]

Both models are exported to ONNX (the pruned widths with the ImageNet stem when --imagenet-stem,
as `compress prune --bench-imagenet-stem` times them), then run alternately, batch 1, with ORT's
profiler on; each node's kernel time is averaged over the runs and summed by kind.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def kinds(onnx_path: Path) -> dict[str, str]:
    """{node name: kind} for the graph's Conv/Gemm nodes: stem/full conv, depthwise, pointwise."""
    import onnx

    proto = onnx.load(str(onnx_path))
    inits = {i.name: list(i.dims) for i in proto.graph.initializer}
    out = {}
    for node in proto.graph.node:
        if node.op_type == "Conv":
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            w = inits.get(node.input[1], [0, 0, 0, 0])
            out[node.name] = "depthwise conv" if group > 1 and w[1] == 1 else \
                ("pointwise (1x1) conv" if w[2:] == [1, 1] else "full conv (stem)")
        elif node.op_type in ("Gemm", "MatMul"):
            out[node.name] = "classifier (Gemm)"
    return out


def profile(paths: list[Path], size: int, runs: int, threads: int) -> list[dict[str, float]]:
    """Per model: {ORT node name: mean kernel µs per run}, plus the end-to-end median ms."""
    import onnxruntime as ort

    sessions = []
    for p in paths:
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.enable_profiling = True
        so.profile_file_prefix = str(p.with_suffix(""))
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions.append(ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]))
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    import time

    walls: list[list[float]] = [[] for _ in paths]
    for i in range(runs + 20):
        for k, s in enumerate(sessions):
            t = time.perf_counter()
            s.run(None, {s.get_inputs()[0].name: x})
            if i >= 20:
                walls[k].append((time.perf_counter() - t) * 1e3)
    result = []
    for k, s in enumerate(sessions):
        events = json.loads(Path(s.end_profiling()).read_text())
        node_us: dict[str, list[float]] = defaultdict(list)
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                node_us[(e["name"][:-len("_kernel_time")], e["args"].get("op_name", "?"))].append(e["dur"])
        per = {key: float(np.sum(v[-runs * 1:]) / runs) for key, v in node_us.items()}  # the timed runs
        per["__wall_ms__"] = float(np.median(walls[k]))
        result.append(per)
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
    from compress.onnx_graph import node_macs
    from compress.prune.measure import export_for_timing, imagenet_stem_twin

    with tempfile.TemporaryDirectory(prefix="breakdown-") as tmp:
        paths, kind_maps, macs = [], [], []
        for name, src in (("before", a.before), ("after", a.after)):
            model, meta = load_model(src)
            if a.imagenet_stem:
                model, meta = imagenet_stem_twin(model, meta)
            p = export_for_timing(model.eval(), meta, a.size, Path(tmp) / f"{name}.onnx")
            paths.append(p)
            kind_maps.append(kinds(p))
            macs.append(node_macs(p, (3, a.size, a.size)) or {})
        profiles = profile(paths, a.size, a.runs, a.threads)
    rows: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0, 0, 0, 0])  # us b/a, macs b/a, nodes b/a
    for k in (0, 1):
        for (node, op), us in ((key, v) for key, v in profiles[k].items() if key != "__wall_ms__"):
            kind = kind_maps[k].get(node) or f"other: {op}"
            rows[kind][k] += us
            rows[kind][4 + k] += 1
        for node, m in macs[k].items():
            rows[kind_maps[k].get(node, "other")][2 + k] += m
    total = [sum(r[0] for r in rows.values()), sum(r[1] for r in rows.values())]
    print("| kind | ms before | ms after | time ratio | MMACs before | MMACs after | MACs ratio | share of time after |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for kind, r in sorted(rows.items(), key=lambda kv: -kv[1][0]):
        tr = f"{r[1] / r[0]:.2f}x" if r[0] else "-"
        mr = f"{r[3] / r[2]:.2f}x" if r[2] else "-"
        print(f"| {kind} | {r[0] / 1e3:.3f} | {r[1] / 1e3:.3f} | {tr} | {r[2] / 1e6:.1f} | {r[3] / 1e6:.1f} | {mr} | "
              f"{r[1] / total[1]:.0%} |")
    mt = [sum(macs[0].values()), sum(macs[1].values())]
    print(f"| all kernels | {total[0] / 1e3:.3f} | {total[1] / 1e3:.3f} | {total[1] / total[0]:.2f}x | "
          f"{mt[0] / 1e6:.1f} | {mt[1] / 1e6:.1f} | {mt[1] / mt[0]:.2f}x | |")
    w = [profiles[0]["__wall_ms__"], profiles[1]["__wall_ms__"]]
    print(f"\nend to end (median of {a.runs} interleaved runs, {a.threads} threads, profiler on): "
          f"{w[0]:.3f} → {w[1]:.3f} ms ({w[1] / w[0]:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
