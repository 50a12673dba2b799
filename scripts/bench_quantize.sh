#!/usr/bin/env bash
# Quantization benchmark quoted in the README (not a test). Re-run:
#   bash scripts/bench_quantize.sh [OUT_DIR]         (make bench-quantize; needs `make data`)
#
# For the Fashion-MNIST MobileNetV2 (BASE, default runs/bench_prune_fashion/mnv2.safetensors, the
# 92.50% model of `DATA=fashion-mnist bash scripts/bench_prune.sh`) and its 50%-pruned version
# (PRUNED, default runs/bench_prune_fashion/mnv2-p50.safetensors):
#  1. export to ONNX; `compress quantize --int8` (the search, timed at the training size 28x28,
#     batch 1, 2 threads, keeping >= MIN_AGREEMENT top-1 agreement), and the same with --format
#     qdq (OpenVINO reads QDQ, not ONNX Runtime's QOperator ops); NNCF's PTQ of the same ONNX
#     file on the same calibration images (scripts/nncf_ptq.py);
#  2. `compress bench` of fp32 / our INT8 / NNCF INT8 in ONNX Runtime, plus OpenVINO (default
#     settings, which compute in bf16 on this CPU, and with the f32 hint) on each of those files,
#     all interleaved in one run: batch 1 and 8, 2 threads, test top-1 on the 10,000 images and
#     agreement with fp32;
#  3. the same graphs' ImageNet-stem twins (same weights and widths, stride-2 stem: the network as it
#     runs on 224x224 photos; calibrated at 28x28 on the same images, the quantization recipe pinned
#     to what step 1 chose), timed at 224x224.
# Then k-means weight sharing, 4 bits, 2 epochs of centroid fine-tuning (distilled), on both models,
# with each handling of BatchNorm: folded with BN live while fine-tuning (--fold-bn, NAME.k4),
# folded and frozen (--freeze-bn, NAME.k4fz), raw weights (--no-fold-bn, NAME.k4raw; the default for
# models without pruned zero weights, like these two); KMEANS_ONLY=k4fz runs one of them.
set -euo pipefail
OUT="${1:-runs/bench_quantize}"
BIN="${BIN:-.venv/bin}"
BASE="${BASE:-runs/bench_prune_fashion/mnv2.safetensors}"
PRUNED="${PRUNED:-runs/bench_prune_fashion/mnv2-p50.safetensors}"
KMEANS="${KMEANS:-1}"
# MIN_AGREEMENT: the search's --min-agreement (default the CLI's 0.99, a bound of 1 point of top-1
# on the agreement images; 0.995 would bound it at the issue's 0.5 point, but on the AMX Xeon's
# pruned model no post-training candidate reached it, nor 2 epochs of QAT, nor NNCF: README).
MIN_AGREEMENT="${MIN_AGREEMENT:-0.99}"
mkdir -p "$OUT"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"

twin() {  # twin IN.safetensors OUT.safetensors: the ImageNet-stem twin, history kept
  "$BIN/python" - "$1" "$2" <<'EOF'
import dataclasses, sys
from compress.artifact import load_model, save_model
from compress.prune.measure import imagenet_stem_twin
model, meta = load_model(sys.argv[1])
twin, twin_meta = imagenet_stem_twin(model, meta)
save_model(twin, sys.argv[2], dataclasses.replace(twin_meta, history=meta.history))
EOF
}

chosen() {  # chosen REPORT.json: the chosen INT8 recipe as compress quantize flags
  "$BIN/python" - "$1" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))["chosen"]
print(f"--format {c['format']} --types {c['types']} --per-channel {'on' if c['per_channel'] else 'off'} "
      f"--calibration {c['calibration']} --bias-correction {'on' if c.get('bias_corrected') else 'off'}")
EOF
}

for name in base pruned; do
  src="$BASE"; [ "$name" = pruned ] && src="$PRUNED"
  [ -f "$src" ] || { echo "missing $src (run DATA=fashion-mnist bash scripts/bench_prune.sh first)" >&2; exit 2; }
  s=$(date +%s)
  "$BIN/compress" export "$src" -o "$OUT/$name.onnx" > /dev/null
  "$BIN/compress" quantize "$OUT/$name.onnx" --int8 --threads 2 --min-agreement "$MIN_AGREEMENT" -o "$OUT/$name.int8.onnx" | tee "$OUT/$name.quantize.txt"
  # the best QDQ form too: OpenVINO cannot read ONNX Runtime's QOperator graphs (com.microsoft ops)
  "$BIN/compress" quantize "$OUT/$name.onnx" --int8 --format qdq --threads 2 --min-agreement "$MIN_AGREEMENT" -o "$OUT/$name.int8qdq.onnx" \
    | tee "$OUT/$name.quantize-qdq.txt"
  "$BIN/python" scripts/nncf_ptq.py "$OUT/$name.onnx" -o "$OUT/$name.nncf.onnx"
  echo "$name: export + quantize search + NNCF: $(( $(date +%s) - s )) s" | tee -a "$OUT/times.txt"
  s=$(date +%s)
  "$BIN/compress" bench "$OUT/$name.onnx" "$OUT/$name.int8.onnx" "$OUT/$name.int8qdq.onnx" "$OUT/$name.nncf.onnx" \
    --peers openvino,openvino-f32 --data fashion-mnist --batch 1,8 --threads 2 -o "$OUT/$name-28" \
    | tee "$OUT/$name-28.txt"
  echo "$name: bench at 28x28: $(( $(date +%s) - s )) s" | tee -a "$OUT/times.txt"

  s=$(date +%s)
  twin "$src" "$OUT/$name.twin.safetensors"
  "$BIN/compress" export "$OUT/$name.twin.safetensors" -o "$OUT/$name.twin.onnx" > /dev/null
  # shellcheck disable=SC2046
  "$BIN/compress" quantize "$OUT/$name.twin.onnx" --int8 --threads 2 --input-size 224 --calib-samples 128 \
    --min-agreement 0.9 $(chosen "$OUT/$name.int8.onnx.json") -o "$OUT/$name.twin.int8.onnx" \
    | tee "$OUT/$name.twin.quantize.txt"
  # shellcheck disable=SC2046
  "$BIN/compress" quantize "$OUT/$name.twin.onnx" --int8 --threads 2 --input-size 224 --calib-samples 128 \
    --min-agreement 0.9 $(chosen "$OUT/$name.int8qdq.onnx.json") -o "$OUT/$name.twin.int8qdq.onnx" \
    | tee "$OUT/$name.twin.quantize-qdq.txt"
  "$BIN/python" scripts/nncf_ptq.py "$OUT/$name.twin.onnx" --calib-samples 128 -o "$OUT/$name.twin.nncf.onnx"
  "$BIN/compress" bench "$OUT/$name.twin.onnx" "$OUT/$name.twin.int8.onnx" "$OUT/$name.twin.int8qdq.onnx" \
    "$OUT/$name.twin.nncf.onnx" \
    --peers openvino,openvino-f32 --input-size 224 --batch 1,8 --threads 2 -o "$OUT/$name-224" \
    | tee "$OUT/$name-224.txt"
  echo "$name: 224x224 twins: $(( $(date +%s) - s )) s" | tee -a "$OUT/times.txt"
done

[ "$KMEANS" = 1 ] || exit 0
for name in base pruned; do
  src="$BASE"; [ "$name" = pruned ] && src="$PRUNED"
  for variant in k4:--fold-bn k4fz:--freeze-bn k4raw:--no-fold-bn; do
    suffix="${variant%%:*}"; flags="${variant#*:}"
    [ -z "${KMEANS_ONLY:-}" ] || [ "$KMEANS_ONLY" = "$suffix" ] || continue
    s=$(date +%s)
    # shellcheck disable=SC2086
    "$BIN/compress" quantize "$src" --kmeans-bits 4 $flags -o "$OUT/$name.$suffix.safetensors" | tee "$OUT/$name.$suffix.txt"
    echo "$name: k-means 4 bits ($suffix) + 2 epochs: $(( $(date +%s) - s )) s" | tee -a "$OUT/times.txt"
  done
done
