"""``POST /predict`` and ``POST /predict/batch``: image files in, labels with scores out.

``POST /predict`` is documented and validated by its FastAPI route; :class:`FastPredictRoute`
answers the plain requests to it with the same code but without FastAPI's per-request
dependency solving (see there)."""
from __future__ import annotations

import hmac
import re
import time
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.routing import Match, Route, get_route_path

from ..engine import top_predictions
from ..errors import ServeError
from ..images import CONTENT_TYPES
from ..schemas import BatchResponse, ErrorBody, PredictResponse
from ..service import Service, get_service, read_body, require_api_key, with_timeout
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


def _timing(start: float, decode: float, preprocess: float, result) -> dict[str, float]:
    return {"decode": round(decode, 3), "preprocess": round(preprocess, 3), "queue": round(result.queue_ms, 3),
            "inference": round(result.inference_ms, 3), "total": round((time.perf_counter() - start) * 1000.0, 3)}


@router.post("/predict", response_model=PredictResponse, responses=ERRORS, openapi_extra=SINGLE_BODY,
             summary="Classify one image")
async def predict(request: Request, service: Service = Depends(get_service), model: str | None = ModelQuery,
                  k: int | None = KQuery, threshold: float | None = ThresholdQuery):
    """Top-k labels (multiclass, softmax) or every label above the threshold (multilabel, sigmoid),
    with the time spent per stage in `timing_ms` and the `Server-Timing` header."""
    return await predict_one(request, service, model, k, threshold)


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
    service.metrics.observe_stages(m.name, timing)
    body = {"model": m.name, "task": m.info.task, "predictions": preds,
            "threshold": (threshold or m.info.threshold) if m.info.task == "multilabel" else None,
            "batch_size": result.batch_size, "timing_ms": timing}
    return JSONResponse(body, headers={"Server-Timing": server_timing(timing)})


_K_RE = re.compile(r"[1-9][0-9]{0,3}")
_THRESHOLD_RE = re.compile(r"0?\.[0-9]{1,17}")


class FastPredictRoute(Route):
    """``POST /predict`` without FastAPI's per-request work (solving the dependencies, validating
    the query with pydantic): ~0.1 ms less per request, a tenth of the HTTP overhead at
    concurrency 1 (measured A/B in one run). It runs :func:`predict_one` like the documented
    route, and it takes only requests whose answer cannot differ from that route's: query values
    in their plain form (``k`` 1-1000 as digits, ``threshold`` a decimal in (0, 1), ``model`` a
    model name, each at most once) and, with ``--api-key``, exactly ``Authorization: Bearer KEY``
    (compared in constant time). Anything else — a value FastAPI must validate or reject, a
    missing or wrong key, another method — does not match here and goes on to the FastAPI route,
    which answers it as before. It is placed first and left out of the OpenAPI schema, which
    the FastAPI route describes."""

    def __init__(self, service: Service):
        super().__init__("/predict", self._endpoint, methods=["POST"], name="predict_fast", include_in_schema=False)
        self.service = service
        key = service.settings.api_key
        self._authorization = None if key is None else b"Bearer " + key.encode("utf-8")

    def matches(self, scope) -> tuple[Match, dict]:
        if scope["type"] != "http" or scope["method"] != "POST" or get_route_path(scope) != "/predict":
            return Match.NONE, {}
        params = self._params(scope["query_string"])
        if params is None or not self._authorized(scope["headers"]):
            return Match.NONE, {}
        return Match.FULL, {"endpoint": self.endpoint, "path_params": {}, "route": self,  # metrics: "/predict"
                            "serve.predict_params": params}

    @staticmethod
    def _params(query: bytes) -> tuple[str | None, int | None, float | None] | None:
        """(model, k, threshold) when every value is in its plain form, else None."""
        if not query:
            return None, None, None
        values: dict[str, str] = {}
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):  # as Starlette does
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

    async def _endpoint(self, request: Request) -> JSONResponse:
        model, k, threshold = request.scope["serve.predict_params"]
        return await predict_one(request, self.service, model, k, threshold)


@router.post("/predict/batch", response_model=BatchResponse, responses=ERRORS, openapi_extra=BATCH_BODY,
             summary="Classify several images in one request")
async def predict_batch(request: Request, service: Service = Depends(get_service), model: str | None = ModelQuery,
                        k: int | None = KQuery, threshold: float | None = ThresholdQuery):
    """The images run as one ONNX Runtime batch; `results` are in the order the files were sent.
    One unusable image fails the request with a 4xx naming it."""
    start = time.perf_counter()
    m = service.model(model)

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
    service.metrics.observe_stages(m.name, timing)
    body = {"model": m.name, "task": m.info.task, "results": results,
            "threshold": (threshold or m.info.threshold) if m.info.task == "multilabel" else None,
            "batch_size": result.batch_size, "timing_ms": timing}
    return JSONResponse(body, headers={"Server-Timing": server_timing(timing)})
