#!/usr/bin/env bash
# The serving benchmark quoted in README.md ("Serving"): in-process ONNX Runtime vs HTTP /predict.
#
#   bash scripts/bench_serve.sh [OUT_DIR]          # default runs/serve_bench; `make bench-serve`
#
# Models: the digits MobileNetV2 (runs/demo/base_onnx.onnx if `make demo` made it, else
# OUT_DIR/base.safetensors, trained here with the default settings when missing, ~5-8 min) and an
# untrained MobileNetV2 with the ImageNet stem at 224x224 (latency does not depend on the weights).
# For each model three servers run side by side on loopback ports:
#   2t      1 worker x 2 ONNX Runtime threads, no micro-batching
#   2t+mb   1 worker x 2 threads, micro-batching (--max-batch 8 --max-wait-ms 2)
#   2x1t    2 workers x 1 thread, no micro-batching
#
# HTTP overhead at concurrency 1: on a shared machine the load changes from second to second, so
# the baseline and the servers are interleaved finely — rounds of BLOCK1 seconds (0.1) per job, the
# jobs of a round in a new random order (seeded), until each job has had SECONDS1 (15) — and each
# job's latencies are pooled. Every block starts with LEAD1 seconds (0.05) of requests that are
# not pooled but kept apart ("after a switch"): on this VM a 2-thread server's first requests after
# other work run slower for about 50 ms (the guest kernel, booted with sched_vcpu_pack, apparently
# packs threads onto one vCPU until it sees both busy), and the rotating order used before, which
# always ran the first server right after the 1-thread in-process job, put that on the first
# server alone (+0.7 ms on its p50).
# Jobs: the in-process baseline (the service's own decode + preprocess + ORT code, no HTTP; 2 ORT
# threads, and 1 thread as the baseline of 2x1t) and every server under two clients: the raw
# client of `compress loadtest --client raw` (one blocking keep-alive socket: what is left is the
# server's cost) and the aiohttp client of `compress loadtest` (adds its own 0.2-0.4 ms). A bare
# uvicorn app answering a constant of the service's answer size gives the floor under each
# client: loopback, kernel, client and uvicorn's HTTP parsing. Overhead = HTTP p50 - in-process
# p50 (same ORT threads); its spread is the range over five consecutive fifths of the run. When
# wrk is installed (apt-get install wrk) it cross-checks the raw client: 1 s of wrk -t1 -c1 then
# 1 s of the raw client per server, three times.
#
# Throughput at the other levels (4, 16): rounds interleave in-process (N threads calling one
# 2-thread session) and each server under the aiohttp client for SECONDS. Server RSS (every
# process of the server) is read from /proc after a 1 s warm-up at each level and again after the
# last round. The share of ONNX Runtime calls each server ran inline on its event loop thread (a
# lone request on an idle server, see serve/batching.py) is read from its /metrics around each level.
# Environment: SECONDS_PER_CELL (default 5), ROUNDS (2), LEVELS (1,4,16), SECONDS1 (15), BLOCK1
# (0.1), LEAD1 (0.05), WRK (the wrk binary, default from PATH; WRK= skips it), BIN (.venv/bin), MODELS
# (digits,imagenet224), SETUPS (JSON {name: [server args]} instead of the three above, for A/B runs,
# e.g. '{"2t": ["--threads", "2"], "2t no inline": ["--threads", "2", "--inline-max-ms", "0"]}').
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-runs/serve_bench}
BIN=${BIN:-.venv/bin}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
mkdir -p "$OUT"

DIGITS_ONNX="$OUT/digits_mobilenet_v2.onnx"
if [ ! -f "$DIGITS_ONNX" ]; then
    if [ -f runs/demo/base_onnx.onnx ]; then
        cp runs/demo/base_onnx.onnx "$DIGITS_ONNX"
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

WRK=${WRK-$(command -v wrk || true)}
"$BIN/python" - "$OUT" "$DIGITS_ONNX" "$IMAGENET_ONNX" "$WRK" <<'PY'
import asyncio
import io
import json
import os
import platform
import random
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from serve.engine import Model
from serve.images import decode_image
from serve.loadtest import RawClient, Tally, header_value, raw_request, run_loadtest_async, run_raw_loadtest

out, digits_onnx, imagenet_onnx, wrk = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] or None
SECONDS = float(os.environ.get("SECONDS_PER_CELL", 5))
ROUNDS = int(os.environ.get("ROUNDS", 2))
SECONDS1 = float(os.environ.get("SECONDS1", 15))
BLOCK1 = float(os.environ.get("BLOCK1", 0.1))
LEAD1 = float(os.environ.get("LEAD1", 0.05))
LEVELS = [int(v) for v in os.environ.get("LEVELS", "1,4,16").split(",")]
CONFIGS = json.loads(os.environ.get("SETUPS") or "null") or {
    "2t": ["--threads", "2"], "2t+mb": ["--threads", "2", "--max-batch", "8", "--max-wait-ms", "2"],
    "2x1t": ["--workers", "2", "--threads", "1"]}
MODELS = os.environ.get("MODELS", "digits,imagenet224").split(",")


def ort_threads(args: list[str]) -> int:
    return int(args[args.index("--threads") + 1]) if "--threads" in args else 1


BASELINE = {c: "in-process" if ort_threads(args) >= 2 else "in-process 1t" for c, args in CONFIGS.items()}
CLIENTS = ["raw", "aiohttp"]


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


def inference_calls(url: str) -> dict[str, float]:
    """ONNX Runtime calls so far by thread ("inline": on the event loop, "inference": the model's
    inference thread), summed over models and workers, from the server's /metrics."""
    calls = {"inline": 0.0, "inference": 0.0}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("serve_inference_calls_total{"):
            thread = re.search(r'thread="([a-z]+)"', line).group(1)
            calls[thread] = calls.get(thread, 0.0) + float(line.rsplit(" ", 1)[1])
    return calls


def calls_between(before: dict, after: dict) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


def start(cmd: list[str], what: str):
    port = free_port()
    proc = subprocess.Popen([*cmd, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"server {what} exited: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.1)
    raise SystemExit(f"server {what} not ready")


# The floor: a bare ASGI app under uvicorn (same options as the service: httptools, uvloop, no
# access log) answering every POST with a constant body of the service's answer size.
BARE_APP = r'''
import sys, uvicorn
size, port = int(sys.argv[1]), int(sys.argv[sys.argv.index("--port") + 1])
BODY = b"x" * size
HEAD = [(b"content-type", b"application/json"), (b"content-length", str(size).encode()),
        (b"server-timing", b"total;dur=0.000")]
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEAD})
    await send({"type": "http.response.body", "body": BODY})
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
'''


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


WRK_LUA = r'''
local f = io.open(os.getenv("BENCH_BODY"), "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_CTYPE")
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %.1f %.1f %.1f\n", summary.requests,
           summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write
           + summary.errors.timeout, latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
'''


def wrk_level(url: str, body_path: Path, ctype: str, seconds: float) -> dict:
    """wrk -t1 -c1 (one connection, like the raw client); its percentiles are whole microseconds."""
    lua = out / "wrk_post.lua"
    lua.write_text(WRK_LUA)
    run = subprocess.run([wrk, "-t1", "-c1", f"-d{max(1, round(seconds))}s", "-s", str(lua), url + "/predict"],
                         capture_output=True, text=True, env={**os.environ, "BENCH_BODY": str(body_path),
                                                              "BENCH_CTYPE": ctype}, timeout=seconds + 60)
    m = re.search(r"^RESULT (\d+) (\d+) ([0-9.]+) ([0-9.]+) ([0-9.]+)$", run.stdout, re.M)
    if run.returncode != 0 or not m:
        raise SystemExit(f"wrk failed: {run.stdout[-500:]} {run.stderr[-500:]}")
    n, errors = int(m.group(1)), int(m.group(2))
    return {"concurrency": 1, "requests": n, "ok": n - errors, "errors": errors, "seconds": seconds,
            "rps": (n - errors) / seconds, "p50_ms": float(m.group(3)) / 1000, "p95_ms": float(m.group(4)) / 1000,
            "p99_ms": float(m.group(5)) / 1000, "server_p50_ms": None, "overhead_p50_ms": None}


def concurrency_1(models: dict[str, Model], data: bytes, ctype: str, urls: dict[str, str]) -> dict:
    """Every (setup, client) job and the in-process baselines, interleaved in blocks of BLOCK1 s
    (each after LEAD1 s kept apart), in a new random order every round."""
    import aiohttp

    loop = asyncio.new_event_loop()

    async def session():
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))

    raw = {s: RawClient(url) for s, url in urls.items()}
    requests = {s: raw_request("POST", f"{c.host}:{c.port}", "/predict", data, {"Content-Type": ctype})
                for s, c in raw.items()}
    sessions = {s: loop.run_until_complete(session()) for s in urls}
    jobs = [(s, None) for s in models] + [(s, c) for s in urls for c in CLIENTS]
    tallies = {job: [Tally() for _ in range(5)] for job in jobs}  # per fifth of the run
    lead_in = {job: Tally() for job in jobs}  # the first LEAD1 s of every block
    spent = {job: 0.0 for job in jobs}
    order = random.Random(0)
    rounds = max(5, round(SECONDS1 / BLOCK1))

    def in_process_block(model, tally, until):
        while True:
            t0 = time.perf_counter()
            model.run(model.transform(decode_image(data, max_pixels=40_000_000))[None])
            t1 = time.perf_counter()
            tally.answer(200, (t1 - t0) * 1000.0, "", b"")
            if t1 >= until:
                return

    def raw_block(setup, tally, until):
        while True:
            t0 = time.perf_counter()
            try:
                status, head, body = raw[setup].request(requests[setup])
            except OSError as e:
                tally.error(type(e).__name__)
            else:
                tally.answer(status, (time.perf_counter() - t0) * 1000.0, header_value(head, b"server-timing"), body)
            if time.perf_counter() >= until:
                return

    async def aiohttp_block(setup, tally, until):
        while True:
            t0 = time.perf_counter()
            try:
                async with sessions[setup].post(urls[setup] + "/predict", data=data,
                                                headers={"content-type": ctype}) as r:
                    body, status, timing = await r.read(), r.status, r.headers.get("server-timing", "")
            except aiohttp.ClientError as e:
                tally.error(type(e).__name__)
            else:
                tally.answer(status, (time.perf_counter() - t0) * 1000.0, timing, body)
            if time.perf_counter() >= until:
                return

    def block(job, tally, until):
        setup, client = job
        if client is None:
            in_process_block(models[setup], tally, until)
        elif client == "raw":
            raw_block(setup, tally, until)
        else:
            loop.run_until_complete(aiohttp_block(setup, tally, until))

    try:
        for model in models.values():
            for _ in range(20):
                model.run(model.transform(decode_image(data, max_pixels=40_000_000))[None])
        for job in jobs:  # warm every connection
            for _ in range(20):
                (setup, client) = job
                if client == "raw":
                    raw[setup].request(requests[setup])
                elif client == "aiohttp":
                    loop.run_until_complete(aiohttp_block(setup, Tally(), 0))
        for r in range(rounds):
            fifth = r * 5 // rounds
            for job in order.sample(jobs, len(jobs)):
                if LEAD1 > 0:
                    block(job, lead_in[job], time.perf_counter() + LEAD1)
                t0 = time.perf_counter()
                block(job, tallies[job][fifth], t0 + BLOCK1)
                spent[job] += time.perf_counter() - t0
            if (r + 1) % max(1, rounds // 5) == 0:
                print(f"  concurrency 1: {r + 1}/{rounds} rounds", flush=True)
    finally:
        for c in raw.values():
            c.close()
        for s in sessions.values():
            loop.run_until_complete(s.close())
        loop.close()

    result = {}
    for job, parts in tallies.items():
        whole = Tally()
        for part in parts:
            whole.client_ms += part.client_ms
            whole.server_ms += part.server_ms
            whole.overhead_ms += part.overhead_ms
            for k, v in part.kinds.items():
                whole.kinds[k] = whole.kinds.get(k, 0) + v
            for k, v in part.batch_sizes.items():
                whole.batch_sizes[k] = whole.batch_sizes.get(k, 0) + v
        cell = whole.result(1, spent[job]).to_dict()
        cell["fifths_p50_ms"] = [float(np.percentile(p.client_ms, 50)) if p.client_ms else None for p in parts]
        lead = lead_in[job]
        cell["after_switch"] = {"requests": len(lead.client_ms) + sum(lead.kinds.values()),
                                "errors": sum(lead.kinds.values()),
                                "p50_ms": float(np.percentile(lead.client_ms, 50)) if lead.client_ms else None}
        result[job] = cell
    return result


def wrk_cross_check(urls: dict[str, str], data: bytes, ctype: str, body_path: Path, rounds: int = 3) -> dict:
    """p50 of wrk -t1 -c1 next to the raw client's, 1 s each, alternating, per server."""
    runs = {s: {"wrk": [], "raw": []} for s in urls}
    for _ in range(rounds):
        for setup, url in urls.items():
            runs[setup]["wrk"].append(wrk_level(url, body_path, ctype, 1.0)["p50_ms"])
            runs[setup]["raw"].append(run_raw_loadtest(url, data, ctype, duration=1.0, warmup=2)["levels"][0]["p50_ms"])
    return {s: {client: float(np.median(v)) for client, v in r.items()} | {"rounds": r} for s, r in runs.items()}


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


def merge(runs):  # rounds of one cell: sum counts, median of the per-round percentiles
    return {"requests": sum(r["requests"] for r in runs), "errors": sum(r["errors"] for r in runs),
            "rps": float(np.median([r["rps"] for r in runs])),
            **{k: (float(np.median([r[k] for r in runs])) if runs[0][k] is not None else None)
               for k in ("p50_ms", "p95_ms", "p99_ms", "server_p50_ms", "overhead_p50_ms")},
            "rounds": runs}


report = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                      "load_average_start": os.getloadavg()},
          "seconds_per_cell": SECONDS, "rounds": ROUNDS, "levels": LEVELS, "configs": CONFIGS,
          "concurrency_1": {"seconds_per_job": SECONDS1, "block_s": BLOCK1, "lead_in_s": LEAD1,
                            "order": "random, seed 0", "clients": CLIENTS}, "models": {}}
for name, onnx in [(n, o) for n, o in (("digits", digits_onnx), ("imagenet224", imagenet_onnx)) if n in MODELS]:
    data, ctype = images()[name]
    body_path = out / f"bench_body_{name}"
    body_path.write_bytes(data)
    serve = [sys.executable, "-m", "serve", f"--model={name}={onnx}", "--log-level", "warning"]
    servers = {c: start(serve + args, c) for c, args in CONFIGS.items()}
    try:
        model = Model(name, onnx, threads=2)
        model_1t = Model(name, onnx, threads=1)
        sample = httpx.post(servers[next(iter(CONFIGS))][1] + "/predict", content=data, headers={"content-type": ctype}).content
        servers["bare uvicorn"] = start([sys.executable, "-c", BARE_APP, str(len(sample))], "bare uvicorn")
        # warm every server at every level (1 s each: thread pools, allocator arenas and ONNX
        # Runtime's buffers reach their working size), then read RSS: growth after that is a leak
        for c in CONFIGS:
            asyncio.run(run_loadtest_async(servers[c][1], data, ctype, LEVELS, duration=1.0, warmup=5))
        rss_before = {c: tree_rss(servers[c][0].pid) for c in CONFIGS}
        cells: dict = {}
        c1: dict = {}
        wrk_check: dict = {}
        urls = {c: servers[c][1] for c in [*CONFIGS, "bare uvicorn"]}
        calls: dict = {}  # (setup, level) -> ONNX Runtime calls by thread during that level's runs
        if 1 in LEVELS:  # the HTTP overhead: every client, finely interleaved with the in-process baseline
            before = {c: inference_calls(servers[c][1]) for c in CONFIGS}
            c1 = concurrency_1({"in-process": model, "in-process 1t": model_1t}, data, ctype, urls)
            for c in CONFIGS:
                calls[(c, 1)] = calls_between(before[c], inference_calls(servers[c][1]))
            for (setup, client), cell in c1.items():
                cells[(setup, client, 1)] = [cell]
            if wrk:
                wrk_check = wrk_cross_check(urls, data, ctype, body_path)
        for r in range(ROUNDS):
            for level in [v for v in LEVELS if v != 1]:
                cells.setdefault(("in-process", None, level), []).append(in_process(model, data, level, SECONDS))
                for c in CONFIGS:
                    before = inference_calls(servers[c][1])
                    rep = asyncio.run(run_loadtest_async(servers[c][1], data, ctype, [level], duration=SECONDS,
                                                         warmup=2))
                    cells.setdefault((c, "aiohttp", level), []).append(rep["levels"][0])
                    moved = calls_between(before, inference_calls(servers[c][1]))
                    calls[(c, level)] = {k: calls.get((c, level), {}).get(k, 0.0) + v for k, v in moved.items()}
                print(f"{name} round {r + 1} level {level}: " + ", ".join(
                    f"{c} {cells[(c, 'aiohttp' if c in CONFIGS else None, level)][-1]['rps']:.0f} req/s"
                    for c in ["in-process", *CONFIGS]), flush=True)
        rss_after = {c: tree_rss(servers[c][0].pid) for c in CONFIGS}
        ort_p50 = ort_only(model, data)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            proc.wait(20)
        body_path.unlink(missing_ok=True)

    overhead = {}
    for (setup, client), cell in c1.items():
        if client is None or setup not in CONFIGS:
            continue
        base = c1[(BASELINE[setup], None)]
        fifths = [h - b for h, b in zip(cell["fifths_p50_ms"], base["fifths_p50_ms"])]
        overhead[f"{setup}/{client}"] = {"baseline": BASELINE[setup], "p50_minus_in_process_ms":
                                         cell["p50_ms"] - base["p50_ms"], "fifths_ms": fifths}
    report["models"][name] = {
        "onnx": onnx, "image_bytes": len(data), "content_type": ctype, "answer_bytes": len(sample),
        "ort_only_p50_ms_2_threads": ort_p50,
        "rss_bytes": {c: {"before": rss_before[c], "after": rss_after[c]} for c in CONFIGS},
        "overhead_concurrency_1": overhead, "wrk_cross_check_p50_ms": wrk_check,
        "inference_calls": {f"{c}@{level}": v for (c, level), v in calls.items()},
        "cells": {f"{s}{'/' + c if c else ''}@{level}": merge(runs) for (s, c, level), runs in cells.items()}}
report["machine"]["load_average_end"] = os.getloadavg()
(out / "bench_serve.json").write_text(json.dumps(report, indent=2) + "\n")

fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
lines = [f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores (shared), load average "
         f"{report['machine']['load_average_start'][0]:.2f} at start, {report['machine']['load_average_end'][0]:.2f} "
         f"at the end; clients on the same machine.", ""]
total_requests = total_errors = 0
for name, m in report["models"].items():
    cells = m["cells"]
    lines += [f"**{name}** ({m['content_type']}, {m['image_bytes']:,} bytes; ORT alone, batch 1, 2 threads: "
              f"{m['ort_only_p50_ms_2_threads']:.2f} ms p50)", ""]
    if 1 in LEVELS:
        lines += [f"HTTP overhead at concurrency 1 ({SECONDS1:g} s per job in interleaved blocks of {BLOCK1:g} s in a "
                  f"new random order every round, each block after {LEAD1:g} s of requests kept apart as \"after a "
                  "switch\"; overhead = HTTP p50 − in-process p50 with the same ORT threads, and its range over "
                  "the five fifths of the run):", "",
                  "| setup | client | p50 ms | p99 ms | in-process p50 ms | overhead p50 ms | over the fifths "
                  "| server total p50 ms | client − server p50 ms | requests | after a switch p50 ms |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for setup in [*CONFIGS, "bare uvicorn"]:
            for client in CLIENTS:
                cell, base = cells[f"{setup}/{client}@1"], BASELINE.get(setup)
                o = m["overhead_concurrency_1"].get(f"{setup}/{client}")
                spread = f"{min(o['fifths_ms']):.2f} to {max(o['fifths_ms']):.2f}" if o else "-"
                lines.append(f"| {setup} | {client} | {cell['p50_ms']:.2f} | {cell['p99_ms']:.2f} | "
                             f"{fmt(cells[base + '@1']['p50_ms'] if base else None)} | "
                             f"{fmt(o['p50_minus_in_process_ms'] if o else None)} | {spread} | "
                             f"{fmt(cell['server_p50_ms'])} | {fmt(cell['overhead_p50_ms'])} | {cell['requests']:,} | "
                             f"{fmt(cell['rounds'][0]['after_switch']['p50_ms'])} |")
                if setup in CONFIGS:
                    total_requests += cell["requests"] + cell["rounds"][0]["after_switch"]["requests"]
                    total_errors += cell["errors"] + cell["rounds"][0]["after_switch"]["errors"]
        after = {b: cells[f"{b}@1"]["rounds"][0]["after_switch"]["p50_ms"] for b in sorted(set(BASELINE.values()))}
        lines += ["", "After a switch, in-process p50 ms: "
                  + ", ".join(f"{b} {fmt(v)}" for b, v in after.items()) + "."]
        if m["wrk_cross_check_p50_ms"]:
            lines += ["", "wrk -t1 -c1 vs the raw client, p50 ms (1 s each, alternating, median of 3): " + ", ".join(
                f"{s} {v['wrk']:.2f} vs {v['raw']:.2f}" for s, v in m["wrk_cross_check_p50_ms"].items()) + "."]
        lines.append("")
    lines += [f"Throughput (aiohttp client; concurrency 1 from the run above, {ROUNDS} interleaved rounds of "
              f"{SECONDS:g} s per cell at the other levels):", "",
              "| concurrency | setup | req/s | p50 ms | p99 ms | server p50 ms | client−server p50 ms | errors |",
              "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for level in LEVELS:
        for c in ["in-process", *CONFIGS]:
            cell = cells[f"{c}@{level}" if c == "in-process" else f"{c}/aiohttp@{level}"]
            lines.append(f"| {level} | {c} | {cell['rps']:.0f} | {cell['p50_ms']:.2f} | {cell['p99_ms']:.2f} | "
                         f"{fmt(cell['server_p50_ms'])} | {fmt(cell['overhead_p50_ms'])} | "
                         f"{cell['errors'] if c != 'in-process' else '-'} |")
            if c != "in-process" and level != 1:
                total_requests += cell["requests"]
                total_errors += cell["errors"]
    share = lambda v: f"{100 * v['inline'] / max(1.0, sum(v.values())):.0f}%"  # noqa: E731
    lines += ["", "ONNX Runtime calls run inline on the event loop thread (the rest on the inference thread), "
              "by concurrency: " + "; ".join(
                  f"{c} " + ", ".join(f"{level}: {share(m['inference_calls'][f'{c}@{level}'])}" for level in LEVELS
                                      if f"{c}@{level}" in m["inference_calls"]) for c in CONFIGS) + "."]
    lines += ["", "Server RSS (all processes) before → after: " + ", ".join(
        f"{c} {v['before'] / 2**20:.0f} → {v['after'] / 2**20:.0f} MiB ({(v['after'] / v['before'] - 1) * 100:+.1f}%)"
        for c, v in m["rss_bytes"].items()) + ".", ""]
lines.append(f"HTTP requests to the service in all: {total_requests:,}, errors: {total_errors}.")
(out / "bench_serve.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
