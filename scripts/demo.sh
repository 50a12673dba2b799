#!/usr/bin/env bash
# The demo pipeline on the bundled digits data: train → prune (+ fine-tune) → export → INT8 →
# k-means + Huffman (.dcz) → bench.
# Ends with the comparison table from `compress bench`. Usage: scripts/demo.sh [OUT_DIR]
set -euo pipefail
OUT=${1:-runs/demo}
BIN=${BIN:-.venv/bin}
EPOCHS=${EPOCHS:-}           # empty = the training defaults
mkdir -p "$OUT"
step() { printf '\n== %s ==\n' "$*"; }

step "1/7 train MobileNetV2 on digits (32x32)"
"$BIN/compress" train --model mobilenet_v2 --data digits ${EPOCHS:+--epochs "$EPOCHS"} -o "$OUT/base.safetensors"

step "2/7 evaluate on the held-out test split"
"$BIN/compress" eval "$OUT/base.safetensors" --data digits --split test

step "3/7 prune 50% of channels (L2 magnitude), fine-tune distilled from the unpruned model (the default)"
"$BIN/compress" prune "$OUT/base.safetensors" --ratio 0.5 --finetune ${FINETUNE:-6} --data digits -o "$OUT/pruned.safetensors"

step "4/7 export both to ONNX (verified against PyTorch)"
"$BIN/compress" export "$OUT/base.safetensors" -o "$OUT/base.onnx" --data digits
"$BIN/compress" export "$OUT/pruned.safetensors" -o "$OUT/pruned.onnx" --data digits

step "5/7 INT8 of the pruned model: the fastest ONNX Runtime configuration on this CPU that keeps 99% agreement"
"$BIN/compress" quantize "$OUT/pruned.onnx" --int8 --threads 2 -o "$OUT/pruned.int8.onnx"

step "6/7 Deep Compression storage of the pruned model: k-means 4-bit (1 epoch of centroid fine-tuning) + Huffman"
"$BIN/compress" quantize "$OUT/pruned.safetensors" --kmeans-bits 4 --finetune 1 -o "$OUT/pruned.k4.safetensors"
"$BIN/compress" huffman encode "$OUT/pruned.k4.safetensors" -o "$OUT/pruned.dcz"

step "7/7 compare: PyTorch eager vs ONNX Runtime, base vs pruned vs INT8 vs .dcz (batch 1, 2 threads)"
"$BIN/compress" bench "$OUT/base.safetensors" "$OUT/base.onnx" "$OUT/pruned.onnx" "$OUT/pruned.int8.onnx" \
    "$OUT/pruned.dcz" --batch 1 --threads 2 --data digits --out "$OUT/bench"
