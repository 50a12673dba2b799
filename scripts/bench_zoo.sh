#!/usr/bin/env bash
# PyTorch eager vs ONNX Runtime fp32 on torchvision-shaped models at 224x224 (the README's table).
#
#   bash scripts/bench_zoo.sh [OUT_DIR]        # default runs/bench_zoo
#
# Creates untrained artifacts (1000 classes, ImageNet stem) with the library — latency does not
# depend on the weights' values — exports each to ONNX (verified against PyTorch), then times
# every model under both engines at batch 1 and 8 with 1 and 2 threads, interleaved.
# Environment: MODELS, BATCH, THREADS, BUDGET (timing seconds per variant per cell), MIN_RUNS,
# WARMUP, EXTRA (more `compress bench` options, e.g. --compile).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-runs/bench_zoo}
BIN=${BIN:-.venv/bin}
MODELS=${MODELS:-"mobilenet_v2 mobilenet_v3_small resnet18 efficientnet_b0"}
BATCH=${BATCH:-1,8}
THREADS=${THREADS:-1,2}
BUDGET=${BUDGET:-1.5}
MIN_RUNS=${MIN_RUNS:-10}
WARMUP=${WARMUP:-2}
mkdir -p "$OUT"

# shellcheck disable=SC2086
"$BIN/python" - "$OUT" $MODELS <<'PY'
import sys
from pathlib import Path

from compress.artifact import ModelMeta, save_model
from models import create_model

out = Path(sys.argv[1])
for name in sys.argv[2:]:
    path = out / f"{name}.safetensors"
    if path.exists():
        continue
    model = create_model(name, num_classes=1000)
    meta = ModelMeta.for_model(model, input_size=[3, 224, 224])
    meta.add_history("create", {"arch": name, "weights": "untrained (latency benchmark only)"})
    save_model(model, path, meta)
    print(f"created {path}")
PY

inputs=()
for m in $MODELS; do
    if [ ! -f "$OUT/$m.onnx" ]; then
        "$BIN/compress" export "$OUT/$m.safetensors" -o "$OUT/$m.onnx"
    fi
    inputs+=("$OUT/$m.safetensors" "$OUT/$m.onnx")
done

# shellcheck disable=SC2086
"$BIN/compress" bench "${inputs[@]}" --input-size 224 --batch "$BATCH" --threads "$THREADS" \
    --budget "$BUDGET" --min-runs "$MIN_RUNS" --warmup "$WARMUP" -o "$OUT/bench" ${EXTRA:-}

# The README table: PyTorch eager vs ONNX Runtime per architecture and cell (markdown).
"$BIN/python" - "$OUT/bench.json" > "$OUT/bench.md" <<'PY'
import json
import sys

report = json.load(open(sys.argv[1]))
m = report["machine"]
cells: dict = {}
for r in report["results"]:
    arch = r["model"].rsplit(".", 1)[0]
    cells.setdefault((arch, r["batch"], r["threads"]), {})[r["engine"]] = r
print(f"Measured on {m['cpu']} ({m['usable_cores']} cores usable, load average "
      f"{m['load_average'][0] if m.get('load_average') else '?'}), torch {m['versions']['torch']}, "
      f"onnxruntime {m['versions']['onnxruntime']}; input 224x224, p50 latency per batch.\n")
print("| model | batch | threads | PyTorch eager (ms) | ONNX Runtime fp32 (ms) | ORT speedup | ORT GMAC/s |")
print("|---|---:|---:|---:|---:|---:|---:|")
for (arch, b, t), e in cells.items():  # the bench's order: threads, batch, models as given
    pt, ort = e.get("pytorch"), e.get("onnxruntime")
    if not (pt and ort):
        continue
    print(f"| {arch} | {b} | {t} | {pt['p50_ms']:.1f} | {ort['p50_ms']:.1f} | {pt['p50_ms'] / ort['p50_ms']:.1f}x "
          f"| {ort['gmacs_per_s']:.1f} |")
print(f"\nCommand: `{report['config'].get('command')}` (via scripts/bench_zoo.sh)")
PY
cat "$OUT/bench.md"
