#!/usr/bin/env bash
# The demo: recipes/mobilenetv2-digits.yaml through `compress pipeline` on the bundled digits data:
# train MobileNetV2 → prune 50% of channels (distilled fine-tuning) → export → INT8 (searched on
# this CPU) → k-means 4-bit + Huffman (.dcz) → bench at batch 1 and 8.
# Ends with the comparison table, writes OUT/report.html and OUT/report.md, and prints how to serve
# the fastest model. Re-running skips every stage whose inputs and options did not change.
# Usage: scripts/demo.sh [OUT_DIR] [RECIPE]
set -euo pipefail
OUT=${1:-runs/demo}
RECIPE=${2:-recipes/mobilenetv2-digits.yaml}
BIN=${BIN:-.venv/bin}
"$BIN/compress" pipeline "$RECIPE" -o "$OUT"
