"""The service's settings: one frozen object, built by the CLI (or a test) and handed to
``create_app(settings)``. Nothing here reads the environment or the disk at import time.

Defaults are chosen for a small CPU box: one ONNX Runtime intra-op thread per model session
(scale out with worker processes or replicas), no micro-batching, 10 MiB uploads, 40 megapixels.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_THREADS = 1
DEFAULT_MAX_BATCH = 1            # 1 = micro-batching off
DEFAULT_MAX_WAIT_MS = 2.0
DEFAULT_MAX_QUEUE = 64           # requests waiting for inference, per model
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000  # width x height of one image (Pillow warns at 89M, errors at 179M)
DEFAULT_MAX_FILES = 16           # images in one /predict/batch request
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_TOP_K = 5
# A one-image request that finds the server idle runs its inference on the event loop thread when
# the model's recent one-image calls all took less than this (ms); 0 = always the inference thread.
# It bounds how long a health check or another model's request can wait behind such a call; 10 ms
# lets the 224x224 MobileNetV2 (5 ms with 2 threads) in, not models ten times its size.
DEFAULT_INLINE_MAX_MS = 10.0
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class SettingsError(ValueError):
    """A setting that cannot work (one line; the CLI prints it and exits 2)."""


@dataclass(frozen=True)
class ModelSpec:
    """One model to serve: the name it is addressed by and the ONNX file."""

    name: str
    path: Path

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise SettingsError(f"model name {self.name!r} must be 1-64 letters, digits, '_', '-' or '.', "
                                "starting with a letter or digit")
        object.__setattr__(self, "path", Path(self.path))


def parse_model_spec(text: str) -> ModelSpec:
    """``name=path`` → ModelSpec; a bare ``path`` is named after the file's stem."""
    name, sep, path = text.partition("=")
    if not sep:
        path = text
        name = Path(text).stem
    if not path:
        raise SettingsError(f"--model {text!r}: expected name=path/to/model.onnx")
    return ModelSpec(name, Path(path))


@dataclass(frozen=True)
class Settings:
    """Everything the app needs. ``models[0]`` is the default model of ``/predict``."""

    models: tuple[ModelSpec, ...]
    threads: int = DEFAULT_THREADS
    max_batch: int = DEFAULT_MAX_BATCH
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS
    max_queue: int = DEFAULT_MAX_QUEUE
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_files: int = DEFAULT_MAX_FILES
    timeout_s: float = DEFAULT_TIMEOUT_S
    top_k: int = DEFAULT_TOP_K
    api_key: str | None = field(default=None, repr=False)
    ort_spinning: bool = False
    inline_max_ms: float = DEFAULT_INLINE_MAX_MS
    # where enrolled few-shot classes are kept (``<model name>.classes.json``); None: next to each
    # model file (``<model file stem>.classes.json``), which a read-only mount does not allow
    classes_dir: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))
        if self.classes_dir is not None:
            object.__setattr__(self, "classes_dir", Path(self.classes_dir))
        if not self.models:
            raise SettingsError("no model to serve: give MODEL.onnx or --model name=path")
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SettingsError(f"model name(s) used twice: {', '.join(dupes)}")
        checks = [("threads", self.threads, 1, 64), ("max_batch", self.max_batch, 1, 1024),
                  ("max_queue", self.max_queue, 1, 100_000), ("max_files", self.max_files, 1, 1024),
                  ("top_k", self.top_k, 1, 100_000)]
        for name, value, lo, hi in checks:
            if not isinstance(value, int) or not lo <= value <= hi:
                raise SettingsError(f"{name} must be an integer between {lo} and {hi}, got {value!r}")
        if not 0 <= self.max_wait_ms <= 1000:
            raise SettingsError(f"max_wait_ms must be between 0 and 1000, got {self.max_wait_ms}")
        if self.max_upload_bytes < 1024:
            raise SettingsError(f"max_upload_bytes must be at least 1024, got {self.max_upload_bytes}")
        if self.max_pixels < 64:
            raise SettingsError(f"max_pixels must be at least 64, got {self.max_pixels}")
        if not 0 <= self.inline_max_ms <= 1000:
            raise SettingsError(f"inline_max_ms must be between 0 and 1000, got {self.inline_max_ms}")
        if not 0 < self.timeout_s <= 3600:
            raise SettingsError(f"timeout_s must be in (0, 3600], got {self.timeout_s}")
        if self.api_key is not None and len(self.api_key) < 8:
            raise SettingsError("api_key must be at least 8 characters")

    @property
    def default_model(self) -> str:
        return self.models[0].name

    def replace(self, **changes: Any) -> "Settings":
        return replace(self, **changes)

    def to_json(self) -> str:
        """Round-trips through :meth:`from_json` (how worker processes receive their settings)."""
        d = asdict(self)
        d["models"] = [{"name": m.name, "path": str(m.path)} for m in self.models]
        d["classes_dir"] = None if self.classes_dir is None else str(self.classes_dir)
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> "Settings":
        d = json.loads(text)
        d["models"] = tuple(ModelSpec(m["name"], Path(m["path"])) for m in d["models"])
        return cls(**d)

    def public(self) -> dict[str, Any]:
        """The settings as shown by ``/model`` (no key, no full paths)."""
        d = json.loads(self.to_json())
        d["api_key"] = "set" if self.api_key else None
        d["classes_dir"] = "set" if self.classes_dir else None
        d["models"] = [m.name for m in self.models]
        return d
