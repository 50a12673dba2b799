#!/usr/bin/env bash
# Pruning benchmarks quoted in the README (not tests). Re-run: scripts/bench_prune.sh [OUT_DIR]
#
# 1. Structured: MobileNetV2 trained on digits with the default settings (32x32), 50% of the
#    channels removed (L2 criterion, channel counts rounded to multiples of 8), then 6 epochs of
#    fine-tuning distilled from the unpruned model (Hinton KD, the same as `make demo`; plain
#    fine-tuning lost about 1.5 points). Accuracy on the digits test split; ONNX Runtime latency at
#    batch 1, 2 threads, 224x224 input, timing the same channel widths with the ImageNet stem
#    (--bench-imagenet-stem), i.e. the network as it would run on 224x224 photos.
#    A base model from `make demo` can be reused: cp runs/demo/base.safetensors OUT/mnv2.safetensors
# 2. Unstructured: ResNet-18 trained on digits, 90% of the conv weights zeroed (global magnitude
#    ranking, AGP schedule over the first half of 6 fine-tuning epochs, masks held after that).
#    ResNet-18 is trained at 16x16 (--image-size 16; digits are 8x8 scans, so nothing is lost) to
#    keep the run to minutes on a shared 2-core machine.
#
# DATA=fashion-mnist (`make data` first) runs part 1 on Fashion-MNIST (10,000 test images): the
# base is trained with the data set's preset (`compress train --model mobilenet_v2 --data
# fashion-mnist`, ~17 min here) unless OUT/mnv2.safetensors exists, FINETUNE (default 6; 3 for
# fashion-mnist) distilled epochs; part 2 runs for digits only (R18=1 forces it). PRUNE_FLAGS adds
# options to part 1's prune (e.g. PRUNE_FLAGS="--augment off": fine-tune on plain images).
set -euo pipefail
OUT="${1:-runs/bench_prune}"
COMPRESS="${COMPRESS:-compress}"
DATA="${DATA:-digits}"
# digits: 1 PyTorch thread as in the figures quoted so far; other data: 2 (the run takes minutes).
if [ "$DATA" = digits ]; then FINETUNE="${FINETUNE:-6}"; T=1; else FINETUNE="${FINETUNE:-3}"; T=2; fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$T}"
mkdir -p "$OUT"

# --- 1. MobileNetV2, channel ratio 0.5 + distilled fine-tuning
[ -f "$OUT/mnv2.safetensors" ] || \
  $COMPRESS train --model mobilenet_v2 --data "$DATA" --no-progress \
    -o "$OUT/mnv2.safetensors"
# shellcheck disable=SC2086
$COMPRESS prune "$OUT/mnv2.safetensors" --ratio 0.5 --method l2 \
  --finetune "$FINETUNE" --distill --bench-input-size 224 --bench-imagenet-stem --quiet ${PRUNE_FLAGS:-} \
  -o "$OUT/mnv2-p50.safetensors"
[ "$DATA" = digits ] || [ "${R18:-0}" = 1 ] || { echo "report: $OUT/mnv2-p50.safetensors.json"; exit 0; }

# --- 2. ResNet-18, 90% unstructured sparsity + fine-tuning
[ -f "$OUT/r18.safetensors" ] || \
  $COMPRESS train --model resnet18 --data digits --image-size 16 --epochs 8 --no-progress \
    -o "$OUT/r18.safetensors"
$COMPRESS prune "$OUT/r18.safetensors" --sparsity 0.9 --global --finetune 6 --no-bench --quiet \
  -o "$OUT/r18-s90.safetensors"

echo "reports: $OUT/mnv2-p50.safetensors.json $OUT/r18-s90.safetensors.json"
