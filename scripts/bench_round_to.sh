#!/usr/bin/env bash
# Channel rounding after pruning vs speed (README, "Fashion-MNIST"; not a test). Re-run:
#   bash scripts/bench_round_to.sh [OUT_DIR]
#
# SRC (default runs/bench_quantize_amx/base.twin.safetensors: the ImageNet-stem twin of the
# Fashion-MNIST MobileNetV2 that scripts/bench_quantize.sh writes) is pruned at RATIO (0.5, L2, no
# fine-tuning: only the shapes matter here) with channel counts rounded to each of ROUND_TOS
# (8,16,32); each is exported and quantized to INT8 with one pinned recipe (QOperator U8S8
# per-tensor MinMax, 64 calibration images), then one `compress bench` times the input and every
# variant interleaved: 224x224, batch 1 and 8, 2 threads.
#
# What it answers: whether channel counts that are multiples of 16 (the channel block of ONNX
# Runtime's NCHWc convolutions with AVX-512, 8 with AVX2) run faster than the finer multiples of 8
# torch-pruning is asked for by default, although they keep more channels.
set -euo pipefail
OUT="${1:-runs/round_to}"
BIN="${BIN:-.venv/bin}"
SRC="${SRC:-runs/bench_quantize_amx/base.twin.safetensors}"
RATIO="${RATIO:-0.5}"
ROUND_TOS="${ROUND_TOS:-8,16,32}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
[ -f "$SRC" ] || { echo "missing $SRC (run scripts/bench_quantize.sh first, or set SRC)" >&2; exit 2; }
mkdir -p "$OUT"
src_onnx="$OUT/input.onnx"
"$BIN/compress" export "$SRC" -o "$src_onnx" > /dev/null
files=("$src_onnx")
for r in ${ROUND_TOS//,/ }; do
  name="$OUT/p${RATIO}-r$r"
  "$BIN/compress" prune "$SRC" --ratio "$RATIO" --method l2 --round-to "$r" --no-bench --no-test --quiet \
    -o "$name.safetensors" > /dev/null
  "$BIN/compress" export "$name.safetensors" -o "$name.onnx" > /dev/null
  "$BIN/compress" quantize "$name.onnx" --int8 --format qoperator --types u8s8 --per-channel off \
    --calibration minmax --bias-correction off --input-size 224 --calib-samples 64 --min-agreement 0.5 \
    --no-test --threads 2 -o "$name.int8.onnx" > /dev/null
  files+=("$name.onnx" "$name.int8.onnx")
done
"$BIN/compress" bench "${files[@]}" --input-size 224 --batch 1,8 --threads 2 -o "$OUT/bench" | tee "$OUT/bench.txt"
