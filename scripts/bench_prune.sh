#!/usr/bin/env bash
# Pruning benchmarks quoted in the README (not tests). Re-run: scripts/bench_prune.sh [OUT_DIR]
#
# 1. Structured: MobileNetV2 trained on digits, 50% of the channels removed (L2 criterion,
#    channel counts rounded to multiples of 8), then 12 epochs of fine-tuning distilled from the
#    unpruned model (Hinton KD; plain fine-tuning reached -1.5 points). Accuracy on the
#    digits test split; ONNX Runtime latency at batch 1, 2 threads, 224x224 input, timing the same
#    channel widths with the ImageNet stem (--bench-imagenet-stem), i.e. the network as it would
#    run on 224x224 photos.
# 2. Unstructured: ResNet-18 trained on digits, 90% of the conv weights zeroed (global magnitude
#    ranking, AGP schedule over the first half of 6 fine-tuning epochs, masks held after that).
#
# Digits are 8x8 scans, so training at 16x16 (--image-size 16) loses nothing and keeps each run
# to a few minutes on a shared 2-core machine; one intra-op thread per PyTorch process is faster
# there than two competing ones (ONNX Runtime timing still uses its own 2 threads).
set -euo pipefail
OUT="${1:-runs/bench_prune}"
COMPRESS="${COMPRESS:-compress}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
mkdir -p "$OUT"

# --- 1. MobileNetV2, channel ratio 0.5 + fine-tuning
[ -f "$OUT/mnv2.safetensors" ] || \
  $COMPRESS train --model mobilenet_v2 --data digits --image-size 16 --epochs 10 --no-progress \
    -o "$OUT/mnv2.safetensors"
$COMPRESS prune "$OUT/mnv2.safetensors" --ratio 0.5 --method l2 --finetune 12 --lr 0.03 --distill \
  --bench-input-size 224 --bench-imagenet-stem --quiet -o "$OUT/mnv2-p50.safetensors"

# --- 2. ResNet-18, 90% unstructured sparsity + fine-tuning
[ -f "$OUT/r18.safetensors" ] || \
  $COMPRESS train --model resnet18 --data digits --image-size 16 --epochs 8 --no-progress \
    -o "$OUT/r18.safetensors"
$COMPRESS prune "$OUT/r18.safetensors" --sparsity 0.9 --global --finetune 6 --no-bench --quiet \
  -o "$OUT/r18-s90.safetensors"

echo "reports: $OUT/mnv2-p50.json $OUT/r18-s90.json"
