"""``POST /predict`` and ``POST /predict/batch``: image files in, labels with scores out.

``POST /predict`` is documented and validated by its FastAPI route; :class:`FastPredict`
answers the plain requests to it with the same code, in front of the middleware stack and
without FastAPI's per-request dependency solving (see there)."""
from __future__ import annotations

import hmac
import inspect
import json
import re
import time
from urllib.parse import parse_qsl

from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import get_route_path

from ..engine import Model, top_predictions
from ..errors import ServeError
from ..images import CONTENT_TYPES
from ..metrics import UNMATCHED
from ..schemas import BatchResponse, ErrorBody, PredictResponse
from ..service import (Service, get_service, limit_body, read_body, refuse_declared_body, require_api_key,
                       with_timeout)
from ..settings import NAME_RE

router = APIRouter(tags=["predict"], dependencies=[Depends(require_api_key)])

_binary = {"schema": {"type": "string", "format": "binary"}}
SINGLE_BODY = {"requestBody": {"required": True, "description": "one image (JPEG, PNG, WebP, BMP, GIF, TIFF): "
                               "the raw body with an image/* or application/octet-stream content type, or a "
                               "multipart form with the image in field `file`",
                               "content": {"multipart/form-data": {"schema": {
                                   "type": "object", "required": ["file"],
                                   "properties": {"file": {"type": "string", "format": "binary"}}}},
                                   "application/octet-stream": _binary,
                                   **{ct: _binary for ct in CONTENT_TYPES}}}}
BATCH_BODY = {"requestBody": {"required": True, "description": "a multipart form with one or more images, "
                              "each in a field named `files` (or `file`)",
                              "content": {"multipart/form-data": {"schema": {
                                  "type": "object", "required": ["files"],
                                  "properties": {"files": {"type": "array",
                                                           "items": {"type": "string", "format": "binary"}}}}}}}}
ERRORS = {code: {"model": ErrorBody, "description": text} for code, text in (
    (400, "not a usable image, or a malformed request"), (401, "missing or wrong bearer token (with --api-key)"),
    (404, "no such model"), (413, "body or image too large"), (415, "not an accepted image format"),
    (422, "invalid query parameter"), (503, "queue full: retry after Retry-After seconds"),
    (504, "the request took longer than the timeout"))}

ModelQuery = Query(None, max_length=64, description="model name (default: the first model served)")
KQuery = Query(None, ge=1, le=1000, description="how many labels to return (multiclass default: the "
                                                "server's --top-k; multilabel: all above the threshold)")
ThresholdQuery = Query(None, gt=0, lt=1, description="multilabel: minimum sigmoid score (default: the model's)")
ModeQuery = Query("logits", description="`logits`: the model's own classes; `prototype`: the nearest few-shot "
                                        "class enrolled with POST /v1/classes, scored by cosine similarity")
Mode = Literal["logits", "prototype"]


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _single_image(request: Request) -> tuple[bytes, str | None]:
    ctype = _media_type(request)
    if ctype == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=8)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ServeError(400, "multipart body needs the image as a file in a field named 'file'")
        return await upload.read(), upload.filename
    if ctype in ("", "application/octet-stream") or ctype.startswith("image/"):
        return await read_body(request), None
    raise ServeError(415, f"content type {ctype!r}: send the image as the raw body (image/* or "
                          "application/octet-stream) or as a multipart form field 'file'")


async def _many_images(request: Request, max_files: int) -> list[tuple[bytes, str | None]]:
    ctype = _media_type(request)
    if ctype != "multipart/form-data":
        raise ServeError(415, f"content type {ctype!r}: /predict/batch takes a multipart form with the images in "
                              "fields named 'files'")
    form = await request.form(max_files=max_files, max_fields=8)
    uploads = [v for key, v in form.multi_items() if key in ("files", "file") and isinstance(v, UploadFile)]
    if not uploads:
        raise ServeError(400, "multipart body has no image: put each one in a field named 'files'")
    return [(await u.read(), u.filename) for u in uploads]


def _k(service: Service, task: str, k: int | None) -> int | None:
    if k is not None or task == "multilabel":
        return k
    return service.settings.top_k


def server_timing(timing: dict[str, float]) -> str:
    return ", ".join(f"{name};dur={ms:.3f}" for name, ms in timing.items())


_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))  # as JSONResponse renders


class _ObserveStages:
    """The per-stage histograms, observed once the body is sent: the client does not wait for them."""

    __slots__ = ("service", "model", "timing")

    def __init__(self, service: Service, model: str, timing: dict[str, float]):
        self.service, self.model, self.timing = service, model, timing

    async def __call__(self) -> None:  # Response.background: awaited on the loop, no thread
        self.service.metrics.observe_stages(self.model, self.timing)


class TimedJSONResponse(JSONResponse):
    """The answer of ``/predict`` and ``/predict/batch``: JSON, the ``Server-Timing`` header, and
    the stage metrics recorded after the body went out."""

    def __init__(self, content: dict, service: Service, model: str, timing: dict[str, float]):
        super().__init__(content, headers={"Server-Timing": server_timing(timing)},
                         background=_ObserveStages(service, model, timing))

    def render(self, content) -> bytes:
        return _JSON.encode(content).encode("utf-8")


def _timing(start: float, decode: float, preprocess: float, result) -> dict[str, float]:
    return {"decode": round(decode, 3), "preprocess": round(preprocess, 3), "queue": round(result.queue_ms, 3),
            "inference": round(result.inference_ms, 3), "total": round((time.perf_counter() - start) * 1000.0, 3)}


@router.post("/predict", response_model=PredictResponse, responses=ERRORS, openapi_extra=SINGLE_BODY,
             summary="Classify one image")
async def predict(request: Request, service: Service = Depends(get_service), model: str | None = ModelQuery,
                  k: int | None = KQuery, threshold: float | None = ThresholdQuery, mode: Mode = ModeQuery):
    """Top-k labels (multiclass, softmax) or every label above the threshold (multilabel, sigmoid),
    with the time spent per stage in `timing_ms` and the `Server-Timing` header. With
    `mode=prototype`: the top-k enrolled few-shot classes by cosine similarity."""
    if mode == "prototype":
        return await predict_prototype(request, service, model, k, threshold)
    return await predict_one(request, service, model, k, threshold)


def _prototype_classes(service: Service, m: Model, threshold: float | None):
    if threshold is not None:
        raise ServeError(400, "threshold applies to mode=logits only (prototype scores are cosine similarities)")
    classes = service.store(m).refresh()
    if not classes:
        raise ServeError(409, f"no few-shot classes enrolled for model {m.name!r}: enrol some with POST /v1/classes")
    return classes


def _nearest(service: Service, classes, embedding, k: int | None) -> list[dict]:
    try:
        return classes.nearest(embedding, k or service.settings.top_k)
    except ValueError:
        raise ServeError(400, "the image gives an all-zero or non-finite embedding: no prototype is nearest") from None


async def predict_prototype(request: Request, service: Service, model: str | None, k: int | None,
                            threshold: float | None) -> JSONResponse:
    """``POST /predict?mode=prototype``: the nearest enrolled classes by cosine similarity."""
    start = time.perf_counter()
    m = service.model(model)
    _prototype_classes(service, m, threshold)  # refuse before reading the image

    async def work():
        with service.arriving(m):
            data, _ = await _single_image(request)
            batch, decode, preprocess = await service.prepare(m, [data])
        result, _, embedding = await service.embed(m, batch)
        return result, embedding, decode, preprocess

    result, embedding, decode, preprocess = await with_timeout(work(), service.settings.timeout_s)
    preds = _nearest(service, _prototype_classes(service, m, None), embedding[0], k)
    service.metrics.prototype_predictions.labels(m.name).inc()
    timing = _timing(start, decode, preprocess, result)
    body = {"model": m.name, "task": "multiclass", "mode": "prototype", "predictions": preds, "threshold": None,
            "batch_size": result.batch_size, "timing_ms": timing}
    return TimedJSONResponse(body, service, m.name, timing)


async def predict_one(request: Request, service: Service, model: str | None, k: int | None,
                      threshold: float | None) -> JSONResponse:
    """``POST /predict`` once its parameters are valid (both routes end here)."""
    start = time.perf_counter()
    m = service.model(model)

    async def work():
        with service.arriving(m):
            data, _ = await _single_image(request)
            batch, decode, preprocess = await service.prepare(m, [data])
        return await service.infer(m, batch), decode, preprocess

    result, decode, preprocess = await with_timeout(work(), service.settings.timeout_s)
    preds = top_predictions(m.info, result.logits[0], _k(service, m.info.task, k), threshold)
    timing = _timing(start, decode, preprocess, result)
    body = {"model": m.name, "task": m.info.task, "predictions": preds,
            "threshold": (threshold or m.info.threshold) if m.info.task == "multilabel" else None,
            "batch_size": result.batch_size, "timing_ms": timing}
    return TimedJSONResponse(body, service, m.name, timing)


_K_RE = re.compile(r"[1-9][0-9]{0,3}")
_THRESHOLD_RE = re.compile(r"0?\.[0-9]{1,17}")


class FastPredict:
    """Plain ``POST /predict`` requests answered in front of the whole middleware stack: no
    FastAPI dependency solving or pydantic query validation, no router, no middleware layers
    (measured A/B over HTTP: about 0.1 ms less per request than as the first route, and that
    ~0.1 ms less again than through the FastAPI route). It does what the stack would do for such a
    request, with the same pieces: the body limit (:func:`refuse_declared_body`,
    :func:`limit_body`), :func:`predict_one`, the app's own exception handlers (ServeError,
    HTTPException: the JSON answer; anything else: the 500 answer, then re-raised for the server
    to log, as Starlette's ServerErrorMiddleware does) and the request metrics under the route
    ``/predict``.

    It takes only requests whose answer cannot differ from the FastAPI route's: query values in
    their plain form (``k`` 1-1000 as digits, ``threshold`` a decimal in (0, 1), ``model`` a model
    name, each at most once; no ``mode``) and, with ``--api-key``, exactly ``Authorization: Bearer KEY``
    (compared in constant time). Anything else — a value FastAPI must validate or reject, a
    missing or wrong key, another method — goes down the stack to the FastAPI route, which
    answers it as before (the OpenAPI schema is that route's)."""

    route = "/predict"  # the route template its requests are counted under

    def __init__(self, app, service: Service):
        self.app = app  # its exception_handlers answer the errors
        self.service = service
        self.limit = service.settings.max_upload_bytes
        key = service.settings.api_key
        self._authorization = None if key is None else b"Bearer " + key.encode("utf-8")

    def wrap(self, stack):
        """The ASGI app to run: this in front of ``stack`` (the app's middleware stack)."""
        async def app(scope, receive, send):
            if scope["type"] == "http":
                params = self.matches(scope)
                if params is not None:
                    await self.serve(scope, receive, send, params)
                    return
            await stack(scope, receive, send)
        return app

    def matches(self, scope) -> tuple[str | None, int | None, float | None] | None:
        """(model, k, threshold) for a plain ``POST /predict`` this may answer, else None."""
        if scope["method"] != "POST" or get_route_path(scope) != "/predict":
            return None
        params = self._params(scope["query_string"])
        if params is None or not self._authorized(scope["headers"]):
            return None
        return params

    @staticmethod
    def _params(query: bytes) -> tuple[str | None, int | None, float | None] | None:
        """(model, k, threshold) when every value is in its plain form, else None."""
        if not query:
            return None, None, None
        values: dict[str, str] = {}
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):  # as Starlette does
            if name == "mode":  # prototype predictions (and mode=logits) go to the FastAPI route
                return None
            if name in ("model", "k", "threshold"):
                if name in values:
                    return None
                values[name] = value
        model, k, threshold = values.get("model"), values.get("k"), values.get("threshold")
        if model is not None and not NAME_RE.fullmatch(model):
            return None
        if k is not None:
            if not _K_RE.fullmatch(k) or int(k) > 1000:
                return None
            k = int(k)
        if threshold is not None:
            if not _THRESHOLD_RE.fullmatch(threshold) or not 0.0 < float(threshold) < 1.0:
                return None
            threshold = float(threshold)
        return model, k, threshold

    def _authorized(self, headers) -> bool:
        if self._authorization is None:
            return True
        given = [value for name, value in headers if name == b"authorization"]
        return len(given) == 1 and hmac.compare_digest(given[0], self._authorization)

    async def serve(self, scope, receive, send, params) -> None:
        metrics = self.service.metrics
        start = time.perf_counter()
        status, started = 500, False

        async def sender(message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        metrics.in_flight.inc()
        metrics.active += 1
        route = self.route
        try:
            refusal = refuse_declared_body(scope, self.limit)
            if refusal is not None:
                route = UNMATCHED  # the stack's body limit answers before any route is chosen
                await refusal(scope, receive, sender)
                return
            receive = limit_body(receive, self.limit)
            request = Request(scope, receive, sender)
            try:
                response = await predict_one(request, self.service, *params)
                await response(scope, receive, sender)
            except Exception as exc:
                await self._answer_error(request, exc, started, sender)
        finally:
            metrics.active -= 1
            metrics.in_flight.dec()
            metrics.observe_request(route, "POST", status, time.perf_counter() - start)

    async def _answer_error(self, request: Request, exc: Exception, started: bool, send) -> None:
        """What the stack does with an exception from the route: a handler of its class (or of an
        HTTPException's status) answers it; anything else gets the 500 handler's answer (unless a
        response has started) and is raised again, for the server to log."""
        handlers = self.app.exception_handlers
        handler = handlers.get(exc.status_code) if isinstance(exc, StarletteHTTPException) else None
        if handler is None:
            handler = next((handlers[cls] for cls in type(exc).__mro__
                            if cls in handlers and cls is not Exception), None)
        if handler is not None:
            if started:
                raise RuntimeError("Caught handled exception, but response already started.") from exc
            await _respond(handler, request, exc, send)
            return
        if not started:
            handler = handlers.get(500) or handlers.get(Exception)
            if handler is None:
                await PlainTextResponse("Internal Server Error", status_code=500)(request.scope, request.receive, send)
            else:
                await _respond(handler, request, exc, send)
        raise exc


async def _respond(handler, request: Request, exc: Exception, send) -> None:
    response = handler(request, exc)
    if inspect.isawaitable(response):
        response = await response
    await response(request.scope, request.receive, send)


@router.post("/predict/batch", response_model=BatchResponse, responses=ERRORS, openapi_extra=BATCH_BODY,
             summary="Classify several images in one request")
async def predict_batch(request: Request, service: Service = Depends(get_service), model: str | None = ModelQuery,
                        k: int | None = KQuery, threshold: float | None = ThresholdQuery, mode: Mode = ModeQuery):
    """The images run as one ONNX Runtime batch; `results` are in the order the files were sent.
    One unusable image fails the request with a 4xx naming it. `mode=prototype` as on `/predict`."""
    start = time.perf_counter()
    m = service.model(model)
    if mode == "prototype":
        return await _predict_batch_prototype(request, service, m, k, threshold, start)

    async def work():
        with service.arriving(m):
            files = await _many_images(request, service.settings.max_files)
            batch, decode, preprocess = await service.prepare(m, [data for data, _ in files])
        return files, await service.infer(m, batch), decode, preprocess

    files, result, decode, preprocess = await with_timeout(work(), service.settings.timeout_s)
    kk = _k(service, m.info.task, k)
    results = [{"filename": name, "predictions": top_predictions(m.info, row, kk, threshold)}
               for (_, name), row in zip(files, result.logits)]
    timing = _timing(start, decode, preprocess, result)
    body = {"model": m.name, "task": m.info.task, "results": results,
            "threshold": (threshold or m.info.threshold) if m.info.task == "multilabel" else None,
            "batch_size": result.batch_size, "timing_ms": timing}
    return TimedJSONResponse(body, service, m.name, timing)


async def _predict_batch_prototype(request: Request, service: Service, m: Model, k: int | None,
                                   threshold: float | None, start: float) -> JSONResponse:
    _prototype_classes(service, m, threshold)

    async def work():
        with service.arriving(m):
            files = await _many_images(request, service.settings.max_files)
            batch, decode, preprocess = await service.prepare(m, [data for data, _ in files])
        result, _, embedding = await service.embed(m, batch)
        return files, result, embedding, decode, preprocess

    files, result, embedding, decode, preprocess = await with_timeout(work(), service.settings.timeout_s)
    classes = _prototype_classes(service, m, None)
    results = [{"filename": name, "predictions": _nearest(service, classes, row, k)}
               for (_, name), row in zip(files, embedding)]
    service.metrics.prototype_predictions.labels(m.name).inc(len(files))
    timing = _timing(start, decode, preprocess, result)
    body = {"model": m.name, "task": "multiclass", "mode": "prototype", "results": results, "threshold": None,
            "batch_size": result.batch_size, "timing_ms": timing}
    return TimedJSONResponse(body, service, m.name, timing)
