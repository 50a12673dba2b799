#!/usr/bin/env bash
# Deep Compression benchmark quoted in the README ("Huffman coding"; not a test). Re-run:
#   bash scripts/bench_huffman.sh [OUT_DIR]          (make bench-huffman; needs `make data`)
#
# The full path of Han et al. (2016) on two Fashion-MNIST models: unstructured magnitude pruning
# with the AGP schedule during fine-tuning (global threshold, distilled from the unpruned model)
# → k-means weight sharing of the BatchNorm-folded weights with centroid fine-tuning (MobileNetV2:
# BN frozen, `--freeze-bn`, 91.54% vs 90.83% with live BN and 89.08% clustering raw weights;
# ResNet-18: BN live, the default, as frozen BN fell to 11.9% validation in its first epoch)
# → Huffman coding (`compress huffman encode`). Then the .dcz is decoded (`compress huffman decode`) and the DECODED model
# is evaluated on the 10,000 test images with `compress eval`. For comparison each base model is
# also coded directly (linear 8-bit + Huffman, no pruning) and with the ANS coder.
#
# Models (trained by README's issue-10 commands when missing):
#   R18   runs/fashion94/resnet18_12ep.safetensors  ResNet-18 (small_input stem), 93.40% test
#   MNV2  runs/fashion/mobilenet_v2.safetensors       MobileNetV2 (small_input stem), 92.50% test
# Settings per model: SPARSITY_R18 (0.93), SPARSITY_MNV2 (0.85), PRUNE_EPOCHS (4), KMEANS_BITS (4),
# KMEANS_EPOCHS_MNV2 (2), KMEANS_EPOCHS_R18 (1). Steps whose output exists are skipped (delete OUT_DIR to start over);
# STAGES=prune stops after pruning + k-means.
set -euo pipefail
OUT="${1:-runs/bench_huffman}"
BIN="${BIN:-.venv/bin}"
R18="${R18:-runs/fashion94/resnet18_12ep.safetensors}"
MNV2="${MNV2:-runs/fashion/mobilenet_v2.safetensors}"
PRUNE_EPOCHS="${PRUNE_EPOCHS:-4}"
KMEANS_BITS="${KMEANS_BITS:-4}"
STAGES="${STAGES:-all}"
MODELS="${MODELS:-mnv2 r18}"
mkdir -p "$OUT"

step() {  # step OUTPUT command...: run unless OUTPUT exists; time it
  local target=$1; shift
  if [ -e "$target" ]; then echo "have $target"; return; fi
  local s; s=$(date +%s)
  "$@"
  echo "$(basename "$target"): $(( $(date +%s) - s )) s" | tee -a "$OUT/times.txt"
}

for name in $MODELS; do
  case $name in
    r18) base=$R18; sparsity=${SPARSITY_R18:-0.93}; kmeans="--finetune ${KMEANS_EPOCHS_R18:-1}" ;;
    mnv2) base=$MNV2; sparsity=${SPARSITY_MNV2:-0.85}; kmeans="--freeze-bn --finetune ${KMEANS_EPOCHS_MNV2:-2}" ;;
    *) echo "unknown model $name (r18, mnv2)" >&2; exit 2 ;;
  esac
  [ -f "$base" ] || { echo "missing $base (train it first: see README, Fashion-MNIST)" >&2; exit 2; }
  p="$OUT/$name"
  step "$p.sparse.safetensors" "$BIN/compress" prune "$base" --sparsity "$sparsity" --global \
    --finetune "$PRUNE_EPOCHS" --no-bench -o "$p.sparse.safetensors"
  step "$p.k$KMEANS_BITS.safetensors" "$BIN/compress" quantize "$p.sparse.safetensors" \
    --kmeans-bits "$KMEANS_BITS" $kmeans -o "$p.k$KMEANS_BITS.safetensors"
  [ "$STAGES" = prune ] && continue
  step "$p.dcz" "$BIN/compress" huffman encode "$p.k$KMEANS_BITS.safetensors" -o "$p.dcz"
  step "$p.ans.dcz" "$BIN/compress" huffman encode "$p.k$KMEANS_BITS.safetensors" --coder ans --no-measure \
    -o "$p.ans.dcz"
  step "$p.base.dcz" "$BIN/compress" huffman encode "$base" -o "$p.base.dcz"
  step "$p.decoded.safetensors" "$BIN/compress" huffman decode "$p.dcz" -o "$p.decoded.safetensors"
  step "$p.decoded.eval.json" "$BIN/compress" eval "$p.decoded.safetensors" --data fashion-mnist \
    --split test --json "$p.decoded.eval.json"
done
