# Every target that needs Python runs inside .venv; `make setup` creates it on a fresh machine.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
OUT     ?= runs/demo
PYTEST_ARGS ?=
# OMP_WAIT_POLICY is left to each command: `compress bench` sets PASSIVE unless you set it (busy-
# waiting OpenMP workers slowed 2-thread eager inference on the shared 2-core machine 294 ms vs
# 56 ms with ACTIVE vs PASSIVE), while training runs 1.36x faster with OpenMP's own default than
# with PASSIVE (404 vs 298 img/s, scripts/train_speed.py --modes stem --size 28 --batch 64).

.PHONY: setup test test-all demo bench bench-serve bench-distill bench-quantize bench-huffman bench-optimize serve docker clean mutation data

$(BIN)/compress: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch and torchvision first, pinned, so pip takes the wheels on this machine's disk
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[compress,dev,peers]'
	@touch $@

setup: $(BIN)/compress

test: setup
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: setup
	bash scripts/demo.sh $(OUT)

bench: setup
	BIN=$(BIN) bash scripts/bench_zoo.sh runs/bench_zoo
	COMPRESS=$(BIN)/compress bash scripts/bench_prune.sh runs/bench_prune

# `make data`: Fashion-MNIST, the data set accuracy claims are measured on (`--data fashion-mnist`).
# With apt (Debian/Ubuntu) it installs the package dataset-fashion-mnist, whose four IDX files land in
# /usr/share/datasets/fashion-mnist, where compress looks for them; elsewhere it says what to download.
# Not part of `make test` (the tests build their own tiny IDX files).
FASHION_DIR ?= /usr/share/datasets/fashion-mnist
APT_GET ?= apt-get
data:
	@if [ -f $(FASHION_DIR)/t10k-labels-idx1-ubyte.gz ]; then \
		echo "fashion-mnist: already installed in $(FASHION_DIR)"; \
	elif command -v $(APT_GET) >/dev/null 2>&1; then \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$sudo $(APT_GET) install -y dataset-fashion-mnist \
			|| { $$sudo $(APT_GET) update && $$sudo $(APT_GET) install -y dataset-fashion-mnist; }; \
	else \
		echo "no apt-get here: download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,"; \
		echo "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz from"; \
		echo "https://github.com/zalandoresearch/fashion-mnist (data/fashion) into a folder, then pass"; \
		echo "--data-root FOLDER or set COMPRESS_DATA_ROOT=FOLDER (also for mnist: http://yann.lecun.com/exdb/mnist/,"; \
		echo "kmnist: https://github.com/rois-codh/kmnist; put each in FOLDER/<name>)"; \
		exit 1; \
	fi

# `make serve` serves the demo's INT8 model (make demo); SERVE_MODEL=path.onnx PORT=... to change.
SERVE_MODEL ?= runs/demo/pruned_int8.onnx
PORT ?= 8000
IMAGE ?= deepcompress-serve
# BASE_IMAGE: default python:3.11-slim (the Dockerfile's); on a machine without Docker Hub access
# `BASE_IMAGE=$$(../shared/tools/docker-local.sh) make docker`.
BASE_IMAGE ?=

serve: setup
	$(BIN)/compress serve $(SERVE_MODEL) --port $(PORT)

docker:
	docker build --network host $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) -f docker/Dockerfile -t $(IMAGE) .
	@docker image inspect -f '{{.Size}}' $(IMAGE) | awk '{printf "image $(IMAGE): %.0f MiB\n", $$1 / 1048576}'

bench-serve: setup
	BIN=$(BIN) bash scripts/bench_serve.sh runs/serve_bench

# Distillation on Fashion-MNIST (`make data` first, ~1 hour): a PP-LCNet x0.25 student trained plainly,
# with Hinton KD, DKD and DIST from one ResNet-18 teacher, 3 seeds each; prints the README's table.
bench-quantize: setup
	BIN=$(BIN) bash scripts/bench_quantize.sh runs/bench_quantize

# Deep Compression on Fashion-MNIST (`make data` first; ~1 hour): AGP pruning -> k-means -> Huffman
# for ResNet-18 and MobileNetV2, the decoded models evaluated on the 10,000 test images.
bench-huffman: setup
	BIN=$(BIN) bash scripts/bench_huffman.sh runs/bench_huffman

# compress optimize on Fashion-MNIST (`make data` first; ~30 min): the latency search (depth x width
# pruning, INT8, threads; 224x224) and the size search (sparsity x k-means bits, Huffman), then the
# chosen latency variant against OpenVINO in one bench run.
bench-optimize: setup
	BIN=$(BIN) bash scripts/bench_optimize.sh runs/optimize-fashion

bench-distill: setup
	COMPRESS=$(BIN)/compress PYTHON=$(BIN)/python bash scripts/bench_distill.sh runs/bench_distill

# Mutation testing of the core modules (issue 8): mutmut 3, killed/total per module and overall;
# fails below 80%. The scope is whole modules where they are core logic (metrics, io, artifact,
# meta, prune/{structured,unstructured,sensitivity,search}) and the named functions where a module
# also holds plumbing (export: _max_abs_diff, verify_onnx, export_onnx; runtime: LatencyStats,
# measure_interleaved, resolve_input_size; bench: _timing_rows, _static_rows, accuracy,
# agreement, decisions, data_metrics) and quantize's arithmetic (k-means, QAT rounding, bias
# correction, INT8 scores) and Fashion-MNIST's path (the IDX reader, rate schedules, weight
# averaging, batch augmentation, presets): see scripts/mutation.py. Seven chunks, each holding
# /tmp/heavy.lock (MUTATION_LOCK= for none); one core. MUTATION_ARGS=--report reprints the table.
MUTATION_ARGS ?=
mutation: setup
	$(BIN)/python scripts/mutation.py $(MUTATION_ARGS)

clean:
	rm -rf runs .pytest_cache mutants
