"""Start the inference service with uvicorn.

    python -m serve model.onnx                          # http://127.0.0.1:8000, one model
    python -m serve --model digits=d.onnx --model photos=p.onnx --host 0.0.0.0 --workers 2
    python -m serve model.onnx --max-batch 8 --max-wait-ms 2   # micro-batching
    python -m serve model.dcz                            # a Huffman-coded container, decoded with numpy

The first model is the default of /predict; every model is addressable by name
(/predict?model=NAME, /v2/models/NAME/infer). Each worker process loads every model with
--threads ONNX Runtime intra-op threads; size workers x threads to the CPUs you give the service.
API: POST /predict, POST /predict/batch, /v2/... (Open Inference Protocol), GET /healthz,
/readyz, /model, /models, /metrics, /docs (OpenAPI); few-shot classes (models with an
embedding output): POST/GET /v1/classes, DELETE /v1/classes/NAME, POST /predict?mode=prototype.
"""
from __future__ import annotations

import argparse
import atexit
import os
import shutil
import socket
import sys
import tempfile

from . import settings as S

API_KEY_ENV = "SERVE_API_KEY"


class CliError(ValueError):
    """Bad command-line input: one line, exit code 2."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("onnx", nargs="?", metavar="MODEL.onnx",
                   help="ONNX model (or .dcz container from `compress huffman encode`) to serve, named "
                        "after its file stem (the default model)")
    p.add_argument("--model", dest="models", action="append", default=[], metavar="NAME=PATH",
                   help="another model to serve under NAME (repeatable); without MODEL.onnx the first "
                        "--model is the default")
    n = p.add_argument_group("network and processes")
    n.add_argument("--host", default=S.DEFAULT_HOST,
                   help="address to bind (default %(default)s: this machine only; 0.0.0.0 for all interfaces)")
    n.add_argument("--port", type=int, default=S.DEFAULT_PORT, help="TCP port (default %(default)s)")
    n.add_argument("--workers", type=int, default=1,
                   help="worker processes, each with its own copy of the models (default %(default)s)")
    n.add_argument("--threads", type=int, default=S.DEFAULT_THREADS,
                   help="ONNX Runtime intra-op threads per model session (default %(default)s)")
    n.add_argument("--ort-spinning", action="store_true",
                   help="let ONNX Runtime's threads busy-wait between calls (default off: they steal CPU "
                        "from request handling)")
    b = p.add_argument_group("micro-batching and back-pressure")
    b.add_argument("--max-batch", type=int, default=S.DEFAULT_MAX_BATCH,
                   help="images per ONNX Runtime call when requests arrive together (default %(default)s = off)")
    b.add_argument("--max-wait-ms", type=float, default=S.DEFAULT_MAX_WAIT_MS,
                   help="how long the first request of a batch waits for more (default %(default)s ms; "
                        "only with --max-batch > 1)")
    b.add_argument("--max-queue", type=int, default=S.DEFAULT_MAX_QUEUE,
                   help="requests waiting for a model before new ones get 503 + Retry-After (default %(default)s)")
    b.add_argument("--inline-max-ms", type=float, default=S.DEFAULT_INLINE_MAX_MS,
                   help="a one-image request that finds the server idle runs its inference on the event "
                        "loop thread (no thread hop) while the model's recent one-image calls took under "
                        "this many ms; anything else waits for the inference thread (default %(default)s; "
                        "0 = never inline)")
    b.add_argument("--timeout", type=float, default=S.DEFAULT_TIMEOUT_S,
                   help="per-request timeout in seconds; 504 after it (default %(default)s)")
    lim = p.add_argument_group("limits and safety")
    lim.add_argument("--max-upload-mb", type=float, default=S.DEFAULT_MAX_UPLOAD_BYTES / 2**20,
                     help="largest request body in MiB; 413 above it (default %(default)s)")
    lim.add_argument("--max-pixels", type=int, default=S.DEFAULT_MAX_PIXELS,
                     help="largest image (width x height), checked before decoding; 413 above it "
                          "(default %(default)s)")
    lim.add_argument("--max-files", type=int, default=S.DEFAULT_MAX_FILES,
                     help="images in one /predict/batch request (default %(default)s)")
    lim.add_argument("--top-k", type=int, default=S.DEFAULT_TOP_K,
                     help="labels /predict returns for multiclass models unless ?k= says otherwise "
                          "(default %(default)s)")
    lim.add_argument("--api-key", default=None,
                     help=f"require 'Authorization: Bearer KEY' on every route but the health checks "
                          f"(default: ${API_KEY_ENV} if set, else no key)")
    f = p.add_argument_group("few-shot classes")
    f.add_argument("--classes-dir", default=None, metavar="DIR",
                   help="where classes enrolled with POST /v1/classes are saved, as NAME.classes.json "
                        "(default: beside each model file, as STEM.classes.json; give a writable DIR when "
                        "the models are on a read-only mount)")
    o = p.add_argument_group("logging")
    o.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn log level (default %(default)s)")
    o.add_argument("--access-log", action="store_true", help="log every request (default off: it costs throughput)")


def build_parser() -> argparse.ArgumentParser:
    class _Parser(argparse.ArgumentParser):
        def error(self, message: str):
            self.exit(2, f"{self.prog}: error: {message}\n")

    p = _Parser(prog="python -m serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def settings_from_args(args: argparse.Namespace) -> S.Settings:
    specs = []
    if args.onnx:
        specs.append(S.parse_model_spec(args.onnx))
    specs += [S.parse_model_spec(text) for text in args.models]
    api_key = args.api_key if args.api_key is not None else (os.environ.get(API_KEY_ENV) or None)
    return S.Settings(models=tuple(specs), threads=args.threads, max_batch=args.max_batch,
                      max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                      max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
                      max_files=args.max_files, timeout_s=args.timeout, top_k=args.top_k, api_key=api_key,
                      ort_spinning=args.ort_spinning, inline_max_ms=args.inline_max_ms,
                      classes_dir=args.classes_dir or None)


def check_models(settings: S.Settings) -> list:
    """Load each model once in this process, so a bad file is one line here, not a worker crash."""
    from .engine import Model

    return [Model(spec.name, spec.path, settings.threads) for spec in settings.models]


def _check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise CliError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def run(args: argparse.Namespace) -> int:
    """Validate everything, then hand over to uvicorn (returns when the server stops).
    Raises :class:`CliError`, :class:`~serve.settings.SettingsError` or
    :class:`~serve.engine.ModelLoadError` (all ``ValueError``, one line) for bad input."""
    import uvicorn

    if not 1 <= args.port <= 65535:
        raise CliError(f"--port must be 1-65535, got {args.port}")
    if not 1 <= args.workers <= 64:
        raise CliError(f"--workers must be 1-64, got {args.workers}")
    if args.max_upload_mb <= 0:
        raise CliError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    settings = settings_from_args(args)
    models = check_models(settings)
    _check_port(args.host, args.port)
    batching = (f"micro-batching up to {settings.max_batch} within {settings.max_wait_ms:g} ms"
                if settings.max_batch > 1 else "micro-batching off")
    names = ", ".join(f"{m.name} ({m.info.path}, {m.info.task}, {m.info.num_classes} classes, "
                      f"{'x'.join(map(str, m.info.input_size[1:]))})" for m in models)
    print(f"serving {names} on http://{args.host}:{args.port} — {args.workers} worker(s) x {settings.threads} "
          f"thread(s), {batching}", file=sys.stderr, flush=True)
    del models
    common = dict(host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log,
                  timeout_graceful_shutdown=5)
    if args.workers == 1:
        from .app import create_app

        uvicorn.run(create_app(settings), **common)
        return 0
    from .app import SETTINGS_ENV

    os.environ[SETTINGS_ENV] = settings.to_json()
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # /metrics sums over the workers
        metrics_dir = tempfile.mkdtemp(prefix="serve-metrics-")
        atexit.register(shutil.rmtree, metrics_dir, ignore_errors=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    uvicorn.run("serve.app:app_from_environment", factory=True, workers=args.workers, **common)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ValueError as e:  # CliError, SettingsError, ModelLoadError
        print(f"python -m serve: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
