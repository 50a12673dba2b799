#!/usr/bin/env bash
# The demo pipeline on the bundled digits data: train → prune (+ fine-tune) → export → bench.
# Ends with the comparison table from `compress bench`. Usage: scripts/demo.sh [OUT_DIR]
set -euo pipefail
OUT=${1:-runs/demo}
BIN=${BIN:-.venv/bin}
EPOCHS=${EPOCHS:-}           # empty = the training defaults
mkdir -p "$OUT"
step() { printf '\n== %s ==\n' "$*"; }

step "1/5 train MobileNetV2 on digits (32x32)"
"$BIN/compress" train --model mobilenet_v2 --data digits ${EPOCHS:+--epochs "$EPOCHS"} -o "$OUT/base.safetensors"

step "2/5 evaluate on the held-out test split"
"$BIN/compress" eval "$OUT/base.safetensors" --data digits --split test

step "3/5 prune 50% of channels (L2 magnitude), fine-tune distilled from the unpruned model (the default)"
"$BIN/compress" prune "$OUT/base.safetensors" --ratio 0.5 --finetune ${FINETUNE:-6} --data digits -o "$OUT/pruned.safetensors"

step "4/5 export both to ONNX (verified against PyTorch)"
"$BIN/compress" export "$OUT/base.safetensors" -o "$OUT/base.onnx" --data digits
"$BIN/compress" export "$OUT/pruned.safetensors" -o "$OUT/pruned.onnx" --data digits

step "5/5 compare: PyTorch eager vs ONNX Runtime, base vs pruned (batch 1, 2 threads)"
"$BIN/compress" bench "$OUT/base.safetensors" "$OUT/base.onnx" "$OUT/pruned.onnx" \
    --batch 1 --threads 2 --data digits --out "$OUT/bench"
