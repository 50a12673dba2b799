#!/usr/bin/env bash
# `compress optimize` benchmark quoted in the README ("Searching"; not a test). Re-run:
#   bash scripts/bench_optimize.sh [OUT_DIR]          (make bench-optimize; needs `make data`)
#
# Two searches from the Fashion-MNIST MobileNetV2 (92.50% test; trained with the data set's preset
# when missing), each choosing on the validation split within 1 point:
#   latency: depth pruning (BLOCKS residual blocks out) x width pruning (RATIOS), distilled
#            fine-tuning (FINETUNE epochs on TRAIN_LIMIT images), ORT INT8, 1-2 threads, timed at
#            224x224 with the ImageNet stem (the network as deployed on photos), batch 1;
#   size:    unstructured sparsity (SPARSITIES) x k-means bits (BITS), Huffman-coded.
# Then the chosen latency variant against OpenVINO (fp32 and its default) reading the input's ONNX
# file, all interleaved in one `compress bench` run. Candidates are reused on a re-run (delete
# OUT_DIR to start over).
set -euo pipefail
OUT="${1:-runs/optimize-fashion}"
BIN="${BIN:-.venv/bin}"
MNV2="${MNV2:-runs/pipeline-fashion/base.safetensors}"
BLOCKS="${BLOCKS:-0,3,6}"
RATIOS="${RATIOS:-0,0.5,0.7}"
SPARSITIES="${SPARSITIES:-0.75,0.85}"
BITS="${BITS:-3,4}"
FINETUNE="${FINETUNE:-1}"
FINETUNE_SIZE="${FINETUNE_SIZE:-2}"
TRAIN_LIMIT="${TRAIN_LIMIT:-20000}"
mkdir -p "$OUT"
if [[ ! -f $MNV2 ]]; then
  "$BIN/compress" train --model mobilenet_v2 --data fashion-mnist -o "$MNV2"
fi
"$BIN/compress" optimize "$MNV2" --objective latency --max-drop 1.0 --blocks "$BLOCKS" --ratios "$RATIOS" \
  --finetune "$FINETUNE" --train-limit "$TRAIN_LIMIT" --input-size 224 --imagenet-stem --threads 2 --runs 100 \
  -o "$OUT/latency" | tee "$OUT/latency.out"
"$BIN/compress" optimize "$MNV2" --objective size --max-drop 1.0 --sparsities "$SPARSITIES" --bits "$BITS" \
  --finetune "$FINETUNE_SIZE" --train-limit "$TRAIN_LIMIT" -o "$OUT/size" | tee "$OUT/size.out"
# The peers, side by side: the input model's ONNX (ORT fp32, OpenVINO f32, OpenVINO default) and the
# chosen variant's timing file (same widths and blocks, ImageNet stem, 224x224).
chosen=$("$BIN/python" -c "import json,sys; c=json.load(open(sys.argv[1]))['chosen']; print(c['candidate'], c['precision'])" "$OUT/latency/optimize.json")
read -r cand prec <<<"$chosen"
"$BIN/compress" bench "$OUT/latency/input_timing_fp32.onnx" "$OUT/latency/candidates/$cand/timing_$prec.onnx" \
  --batch 1 --threads 2 --input-size 224 --peers openvino,openvino-f32 --budget 5 -o "$OUT/peers" | tee "$OUT/peers.out"
