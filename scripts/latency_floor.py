"""The fastest any width x depth pruning can make a network in ONNX Runtime on this CPU, before
accuracy is even asked: the structures themselves, random weights, timed interleaved.

    .venv/bin/python scripts/latency_floor.py [--arch mobilenet_v2] [--size 224] \\
        [--widths 1,0.5,0.35] [--depths 0,all] [--threads 2] [--peers openvino] [-o runs/latency_floor]

Every (width multiplier, residual blocks removed) pair is built with the ImageNet layout (as the
224x224 twins of `compress prune --bench-imagenet-stem` and `compress optimize --imagenet-stem` are
timed), exported to ONNX and quantized to static INT8 (QOperator U8S8 per-tensor, MinMax on 8 random
images: the structure `compress quantize` picked for MobileNetV2 on both machines here); then one
`compress bench` run times every file interleaved, the first (width 1, nothing removed, fp32) the
baseline. A width multiplier stands in for uniform channel pruning at that ratio (the same layer
widths up to rounding); `all` removes every residual block (x + f(x) -> x). Weights are random
with BatchNorm at identity, which changes nothing in how long ONNX Runtime takes.

What it answers: how far the levers of `compress optimize --objective latency` can go at all. The
layers no depth pruning can remove (stem, the stride-2 and channel-changing blocks, the early
high-resolution ones) and the per-operator cost set a floor that no accuracy budget moves.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build(arch: str, width: float, depth: str, size: int):
    """(model, meta) of ``arch`` at ``width`` with ``depth`` residual blocks out (from the end of
    the network) or ``all`` of them."""
    import torch

    from compress.meta import ModelMeta
    from models import create_model, remove_blocks, residual_blocks

    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, width_mult=width, small_input=False).eval()
    blocks = residual_blocks(model)
    n = len(blocks) if depth == "all" else int(depth)
    if n > len(blocks):
        raise SystemExit(f"--depths {depth}: {arch} has {len(blocks)} residual blocks")
    remove_blocks(model, blocks[len(blocks) - n:])  # records them in model.arch_kwargs
    for m in model.modules():  # identity BatchNorm: activations keep a sane range through the net
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_var.fill_(1.0)
            m.running_mean.zero_()
    meta = ModelMeta(arch=arch, num_classes=10, arch_kwargs=dict(model.arch_kwargs), input_size=[3, size, size])
    return model, meta


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="mobilenet_v2")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--widths", default="1,0.5,0.35", help="width multipliers (1 - pruning ratio)")
    ap.add_argument("--depths", default="0,all", help="residual blocks removed: counts, or all")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--batch", default="1")
    ap.add_argument("--peers", default="openvino", help="also passed to compress bench ('' for none)")
    ap.add_argument("--budget", default="1.5", help="compress bench --budget (seconds per variant per cell)")
    ap.add_argument("-o", "--out", default="runs/latency_floor")
    a = ap.parse_args()

    from compress.prune.measure import export_for_timing
    from compress.quantize.calib import QuantData
    from compress.quantize.int8 import Candidate, preprocess_graph, quantize_candidate

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    images = np.random.default_rng(0).standard_normal((8, 3, a.size, a.size)).astype(np.float32)
    data = QuantData(calib=images, eval=images[:1])
    files = []
    for w in (float(v) for v in a.widths.split(",")):
        for d in a.depths.split(","):
            tag = f"w{w:g}-d{d}"
            model, meta = build(a.arch, w, d, a.size)
            fp32 = export_for_timing(model, meta, a.size, out / f"{tag}.onnx")
            with tempfile.TemporaryDirectory() as tmp:
                pre = Path(tmp) / "pre.onnx"
                preprocess_graph(fp32, pre)
                quantize_candidate(pre, out / f"{tag}.int8.onnx", Candidate("qoperator", "u8s8", False), data,
                                   "input", Path(tmp))
            params = sum(p.numel() for p in model.parameters())
            print(f"{tag}: {params / 1e6:.2f}M parameters", flush=True)
            files += [out / f"{tag}.onnx", out / f"{tag}.int8.onnx"]
    cmd = [sys.executable, "-m", "compress", "bench", *map(str, files), "--batch", a.batch, "--threads", a.threads,
           "--budget", a.budget, "-o", str(out / "bench")]
    if a.peers:
        cmd += ["--peers", a.peers]
    return subprocess.call(cmd)


if __name__ == "__main__":
    raise SystemExit(main())
