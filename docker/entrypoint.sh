#!/bin/sh
# Starts `python -m serve` from the environment (see docker/Dockerfile); extra arguments are
# passed on. A first argument that is not an option is run as a command instead (docker run IMG sh).
set -eu
if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
  exec "$@"
fi
set -- --host "$HOST" --port "$PORT" --workers "$WORKERS" --threads "$THREADS" \
       --max-batch "$MAX_BATCH" --max-wait-ms "$MAX_WAIT_MS" "$@"
if [ -n "${CLASSES_DIR:-}" ]; then  # few-shot classes (POST /v1/classes): /models is usually read-only
  set -- --classes-dir "$CLASSES_DIR" "$@"
fi
found=0
if [ -n "${MODELS:-}" ]; then
  for spec in $MODELS; do
    set -- "$@" --model "$spec"
    found=1
  done
else
  for f in /models/*.onnx /models/*.dcz; do
    [ -e "$f" ] || continue
    name=$(basename "$f"); name=${name%.*}
    set -- "$@" --model "$name=$f"
    found=1
  done
fi
if [ "$found" = 0 ]; then
  echo "entrypoint: no model: mount ONNX (or .dcz) files at /models, set MODELS=\"name=/path.onnx\", or build with --build-arg MODEL=path.onnx" >&2
  exit 2
fi
if [ -n "${API_KEY:-}" ]; then
  export SERVE_API_KEY="$API_KEY"
fi
exec python -m serve "$@"
