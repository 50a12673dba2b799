"""The FastAPI inference service: ONNX Runtime sessions, numpy + Pillow preprocessing read from
the ONNX file's metadata, ``/predict``, the Open Inference Protocol v2, health and metrics.

It imports neither torch nor ``compress`` (a test enforces it): only onnxruntime, numpy, pillow,
fastapi, uvicorn, python-multipart and prometheus-client, so the Docker image installs the base
distribution only.

    python -m serve model.onnx --port 8000
    from serve import Settings, ModelSpec, create_app
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["create_app", "Settings", "ModelSpec", "__version__"]


def __getattr__(name: str):  # lazy, so `import serve.images` does not pull in FastAPI
    if name == "create_app":
        from .app import create_app

        return create_app
    if name in ("Settings", "ModelSpec"):
        from . import settings

        return getattr(settings, name)
    raise AttributeError(f"module 'serve' has no attribute {name!r}")
