#!/usr/bin/env bash
# The serving benchmark quoted in README.md ("Serving"): in-process ONNX Runtime vs HTTP /predict.
#
#   bash scripts/bench_serve.sh [OUT_DIR]          # default runs/serve_bench; `make bench-serve`
#
# Models: the digits MobileNetV2 (runs/demo/base.onnx if `make demo` made it, else
# OUT_DIR/base.safetensors, trained here with the default settings when missing, ~5-8 min) and an
# untrained MobileNetV2 with the ImageNet stem at 224x224 (latency does not depend on the weights).
# For each model three servers run side by side on loopback ports:
#   2t      1 worker x 2 ONNX Runtime threads, no micro-batching
#   2t+mb   1 worker x 2 threads, micro-batching (--max-batch 8 --max-wait-ms 2)
#   2x1t    2 workers x 1 thread, no micro-batching
# and rounds interleave, per concurrency level (1, 4, 16): in-process (the same decode +
# preprocess + ORT code, no HTTP, N threads calling one 2-thread session), then each server under
# `compress loadtest`'s client (aiohttp) for SECONDS. Server RSS (every process of the server) is
# read from /proc after a 1 s warm-up at each level and again after the last round.
# Environment: SECONDS_PER_CELL (default 5), ROUNDS (2), LEVELS (1,4,16), BIN (.venv/bin).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-runs/serve_bench}
BIN=${BIN:-.venv/bin}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
mkdir -p "$OUT"

DIGITS_ONNX="$OUT/digits_mobilenet_v2.onnx"
if [ ! -f "$DIGITS_ONNX" ]; then
    if [ -f runs/demo/base.onnx ]; then
        cp runs/demo/base.onnx "$DIGITS_ONNX"
    else
        [ -f "$OUT/base.safetensors" ] || "$BIN/compress" train --model mobilenet_v2 --data digits -o "$OUT/base.safetensors"
        "$BIN/compress" export "$OUT/base.safetensors" -o "$DIGITS_ONNX"
    fi
fi

IMAGENET_ONNX="$OUT/mobilenet_v2_224.onnx"
if [ ! -f "$IMAGENET_ONNX" ]; then
    "$BIN/python" - "$OUT/mobilenet_v2_224.safetensors" <<'PY'
import sys

from compress.artifact import ModelMeta, save_model
from models import create_model

model = create_model("mobilenet_v2", num_classes=1000)  # ImageNet stem (small_input off)
meta = ModelMeta.for_model(model, input_size=[3, 224, 224])
meta.add_history("create", {"arch": "mobilenet_v2", "weights": "untrained (latency benchmark only)"})
save_model(model, sys.argv[1], meta)
PY
    "$BIN/compress" export "$OUT/mobilenet_v2_224.safetensors" -o "$IMAGENET_ONNX"
fi

"$BIN/python" - "$OUT" "$DIGITS_ONNX" "$IMAGENET_ONNX" <<'PY'
import asyncio
import io
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from serve.engine import Model
from serve.images import decode_image
from serve.loadtest import run_loadtest_async

out, digits_onnx, imagenet_onnx = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
SECONDS = float(os.environ.get("SECONDS_PER_CELL", 5))
ROUNDS = int(os.environ.get("ROUNDS", 2))
LEVELS = [int(v) for v in os.environ.get("LEVELS", "1,4,16").split(",")]
CONFIGS = {"2t": ["--threads", "2"], "2t+mb": ["--threads", "2", "--max-batch", "8", "--max-wait-ms", "2"],
           "2x1t": ["--workers", "2", "--threads", "1"]}


def images():
    """A real digit scan as PNG (the digits model) and a 320x240 JPEG photo-sized input (224 model)."""
    from sklearn.datasets import load_digits

    scan = load_digits().images[0]
    grey = Image.fromarray(np.round(scan * 255 / 16).astype(np.uint8), "L")
    png = io.BytesIO()
    grey.save(png, "PNG")
    rng = np.random.default_rng(0)
    photo = np.asarray(grey.resize((320, 240), Image.Resampling.BILINEAR).convert("RGB"), dtype=np.int16)
    photo = np.clip(photo + rng.integers(-20, 20, photo.shape), 0, 255).astype(np.uint8)
    jpg = io.BytesIO()
    Image.fromarray(photo).save(jpg, "JPEG", quality=90)
    return {"digits": (png.getvalue(), "image/png"), "imagenet224": (jpg.getvalue(), "image/jpeg")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_rss(pid: int) -> int:
    """Resident bytes of pid and its children (uvicorn's workers)."""
    pids = [pid]
    try:
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    total = 0
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def start(onnx: str, name: str, args: list[str]):
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "serve", f"--model={name}={onnx}", "--port", str(port),
                             "--log-level", "warning", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"server {args} exited: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.1)
    raise SystemExit(f"server {args} not ready")


def in_process(model: Model, data: bytes, concurrency: int, seconds: float) -> dict:
    """The service's own pipeline without HTTP: decode + preprocess + ORT, `concurrency` threads."""
    lat, errors, stop = [], 0, time.perf_counter() + seconds
    lock = threading.Lock()

    def worker():
        mine = []
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            x = model.transform(decode_image(data, max_pixels=40_000_000))[None]
            model.run(x)
            mine.append((time.perf_counter() - t0) * 1000)
        with lock:
            lat.extend(mine)

    start_t = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as ex:
        for f in [ex.submit(worker) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - start_t
    a = np.asarray(lat)
    return {"concurrency": concurrency, "requests": len(a), "ok": len(a), "errors": errors, "seconds": wall,
            "rps": len(a) / wall, "p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "server_p50_ms": None, "overhead_p50_ms": None}


def ort_only(model: Model, data: bytes, n: int = 300) -> float:
    x = model.transform(decode_image(data, max_pixels=40_000_000))[None]
    for _ in range(20):
        model.run(x)
    t = []
    for _ in range(n):
        t0 = time.perf_counter()
        model.run(x)
        t.append((time.perf_counter() - t0) * 1000)
    return float(np.percentile(t, 50))


report = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                      "load_average_start": os.getloadavg()},
          "seconds_per_cell": SECONDS, "rounds": ROUNDS, "levels": LEVELS, "configs": CONFIGS, "models": {}}
for name, onnx in (("digits", digits_onnx), ("imagenet224", imagenet_onnx)):
    data, ctype = images()[name]
    servers = {c: start(onnx, name, args) for c, args in CONFIGS.items()}
    try:
        model = Model(name, onnx, threads=2)
        # warm every server at every level (1 s each: thread pools, allocator arenas and ONNX
        # Runtime's buffers reach their working size), then read RSS: growth after that is a leak
        for _, url in servers.values():
            asyncio.run(run_loadtest_async(url, data, ctype, LEVELS, duration=1.0, warmup=5))
        rss_before = {c: tree_rss(p.pid) for c, (p, _) in servers.items()}
        cells: dict = {}
        for r in range(ROUNDS):
            for level in LEVELS:
                cells.setdefault(("in-process", level), []).append(in_process(model, data, level, SECONDS))
                for c, (_, url) in servers.items():
                    rep = asyncio.run(run_loadtest_async(url, data, ctype, [level], duration=SECONDS, warmup=2))
                    cells.setdefault((c, level), []).append(rep["levels"][0])
                print(f"{name} round {r + 1} level {level}: " + ", ".join(
                    f"{c} {cells[(c, level)][-1]['rps']:.0f} req/s" for c in ["in-process", *CONFIGS]), flush=True)
        rss_after = {c: tree_rss(p.pid) for c, (p, _) in servers.items()}
        ort_p50 = ort_only(model, data)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            proc.wait(20)

    def merge(runs):  # rounds of one cell: sum counts, median of the per-round percentiles
        return {"requests": sum(r["requests"] for r in runs), "errors": sum(r["errors"] for r in runs),
                "rps": float(np.median([r["rps"] for r in runs])),
                **{k: (float(np.median([r[k] for r in runs])) if runs[0][k] is not None else None)
                   for k in ("p50_ms", "p95_ms", "p99_ms", "server_p50_ms", "overhead_p50_ms")},
                "rounds": runs}

    report["models"][name] = {
        "onnx": onnx, "image_bytes": len(data), "content_type": ctype, "ort_only_p50_ms_2_threads": ort_p50,
        "rss_bytes": {c: {"before": rss_before[c], "after": rss_after[c]} for c in CONFIGS},
        "cells": {f"{c}@{level}": merge(runs) for (c, level), runs in cells.items()}}
report["machine"]["load_average_end"] = os.getloadavg()
(out / "bench_serve.json").write_text(json.dumps(report, indent=2) + "\n")

lines = [f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores (shared), load average "
         f"{report['machine']['load_average_start'][0]:.2f} at start; {ROUNDS} interleaved rounds of "
         f"{SECONDS:g} s per cell; client (aiohttp) on the same machine.", ""]
total_requests = total_errors = 0
for name, m in report["models"].items():
    cells = m["cells"]
    lines += [f"**{name}** ({m['content_type']}, {m['image_bytes']:,} bytes; ORT alone, batch 1, 2 threads: "
              f"{m['ort_only_p50_ms_2_threads']:.2f} ms p50)", "",
              "| concurrency | setup | req/s | p50 ms | p99 ms | server p50 ms | client−server p50 ms | errors |",
              "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for level in LEVELS:
        for c in ["in-process", *CONFIGS]:
            cell = cells[f"{c}@{level}"]
            fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
            lines.append(f"| {level} | {c} | {cell['rps']:.0f} | {cell['p50_ms']:.2f} | {cell['p99_ms']:.2f} | "
                         f"{fmt(cell['server_p50_ms'])} | {fmt(cell['overhead_p50_ms'])} | "
                         f"{cell['errors'] if c != 'in-process' else '-'} |")
            if c != "in-process":
                total_requests += cell["requests"]
                total_errors += cell["errors"]
    base = cells["in-process@1"]["p50_ms"]
    lines += ["", "HTTP overhead at concurrency 1 (p50 of /predict − p50 in-process): " + ", ".join(
        f"{c} {cells[f'{c}@1']['p50_ms'] - base:+.2f} ms" for c in CONFIGS) + ".",
        "Server RSS (all processes) before → after: " + ", ".join(
        f"{c} {v['before'] / 2**20:.0f} → {v['after'] / 2**20:.0f} MiB ({(v['after'] / v['before'] - 1) * 100:+.1f}%)"
        for c, v in m["rss_bytes"].items()) + ".", ""]
lines.append(f"HTTP requests in all: {total_requests:,}, errors: {total_errors}.")
(out / "bench_serve.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
