"""The app factory: ``create_app(settings)`` builds a FastAPI app whose lifespan loads the models
(one ONNX Runtime session each) and starts their inference queues.

    from serve import Settings, ModelSpec, create_app
    app = create_app(Settings(models=(ModelSpec("digits", "model.onnx"),)))

Worker processes (``--workers N``) build their app with :func:`app_from_environment`, which reads
the settings the launcher put in ``SERVE_SETTINGS`` — at app creation, never at import.
"""
from __future__ import annotations

import os
from contextlib import asynccontextmanager

from fastapi import FastAPI

from . import __version__
from .errors import install_error_handlers
from .metrics import MetricsMiddleware
from .routers import classes, oip, ops, predict
from .schemas import InferenceRequest
from .service import BodyLimitMiddleware, Service
from .settings import Settings

SETTINGS_ENV = "SERVE_SETTINGS"


class ServeApp(FastAPI):
    """FastAPI with one shortcut: ``fast_predict`` (a :class:`~serve.routers.predict.FastPredict`)
    answers plain ``POST /predict`` requests in front of the middleware stack; None turns it off."""

    fast_predict: predict.FastPredict | None = None

    def build_middleware_stack(self):
        stack = super().build_middleware_stack()
        return stack if self.fast_predict is None else self.fast_predict.wrap(stack)


def create_app(settings: Settings) -> FastAPI:
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = ServeApp(title="deepcompress-cpu inference service", version=__version__, lifespan=lifespan,
                   description="Image classification with ONNX Runtime on CPU: `/predict` for images, the Open "
                               "Inference Protocol v2 (`/v2/...`) for tensors, `/metrics` for Prometheus.")
    app.state.settings = settings
    app.state.service = service
    install_error_handlers(app)
    for router in (predict.router, classes.router, oip.health, oip.router, ops.health, ops.router):
        app.include_router(router)
    app.fast_predict = predict.FastPredict(app, service)  # plain POST /predict, same answers
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_upload_bytes)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)  # outermost: counts 413s too
    _document_request_schemas(app)
    return app


def _document_request_schemas(app: FastAPI) -> None:
    """Routes that parse their own body (binary or JSON) reference InferenceRequest in OpenAPI;
    add it (and the schemas it uses) to the components."""
    build = app.openapi

    def openapi():
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        defs = InferenceRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, sub in defs.pop("$defs", {}).items():
            components.setdefault(name, sub)
        components["InferenceRequest"] = defs
        return schema

    app.openapi = openapi


def app_from_environment() -> FastAPI:
    """uvicorn factory for worker processes: settings from ``$SERVE_SETTINGS`` (JSON)."""
    text = os.environ.get(SETTINGS_ENV)
    if not text:
        raise RuntimeError(f"{SETTINGS_ENV} is not set; start the server with `python -m serve`")
    return create_app(Settings.from_json(text))
