#!/usr/bin/env bash
# The distillation benchmark quoted in the README (not a test). Re-run:
#   scripts/bench_distill.sh [OUT_DIR]          (`make data` first; ~1 hour on 2 cores)
#
# A small student (STUDENT, default PP-LCNet x0.25) on Fashion-MNIST, trained three ways from the
# same teacher (TEACHER, default a ResNet-18 trained with
# `compress train --model resnet18 --data fashion-mnist --amp bf16 --no-channels-last --epochs 4`,
# made here when missing), with the same data set preset (6 epochs, 28x28, no augmentation) and
# the same seeds: plainly (`compress train`), with Hinton KD, with DKD and with DIST
# (`compress distill --kd-loss ...`, every loss at its documented defaults). The teacher's logits
# are cached once per run (no augmentation). Then scripts/distill_table.py prints mean ± spread
# over the seeds (test top-1 on the 10,000 test images) as the README's table.
set -euo pipefail
OUT="${1:-runs/bench_distill}"
COMPRESS="${COMPRESS:-compress}"
PYTHON="${PYTHON:-python}"
STUDENT="${STUDENT:-pplcnet_x0_25}"
TEACHER="${TEACHER:-$OUT/teacher_resnet18.safetensors}"
SEEDS="${SEEDS:-0 1 2}"
LOSSES="${LOSSES:-kd dkd dist}"
mkdir -p "$OUT"

[ -f "$TEACHER" ] || $COMPRESS train --model resnet18 --data fashion-mnist --amp bf16 --no-channels-last --epochs 4 \
  --no-progress -o "$TEACHER"
for seed in $SEEDS; do
  [ -f "$OUT/plain_s$seed.safetensors" ] || \
    $COMPRESS train --model "$STUDENT" --data fashion-mnist --seed "$seed" --no-progress \
      -o "$OUT/plain_s$seed.safetensors"
  for loss in $LOSSES; do
    [ -f "$OUT/${loss}_s$seed.safetensors" ] || \
      $COMPRESS distill --teacher "$TEACHER" --student-arch "$STUDENT" --data fashion-mnist --seed "$seed" \
        --kd-loss "$loss" --no-progress -o "$OUT/${loss}_s$seed.safetensors"
  done
done
$PYTHON scripts/distill_table.py "$OUT" | tee "$OUT/table.md"
