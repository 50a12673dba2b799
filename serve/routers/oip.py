"""Open Inference Protocol v2 (KServe v2 / Triton REST), so existing clients and tooling work
unchanged: server and model metadata, health, readiness, and ``infer`` with FP32 tensors as JSON
or with the binary tensor data extension (``Inference-Header-Content-Length``: a JSON header
followed by the raw little-endian tensors), plus Triton's ``classification`` output parameter.
Errors are ``{"error": "..."}``."""
from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from .. import __version__
from ..batching import InferenceFailed
from ..engine import Model, softmax, sigmoid
from ..errors import ServeError
from ..schemas import (ErrorBody, InferenceRequest, InferenceResponse, Live, ModelMetadata, ModelReady, Ready,
                       RequestOutput, ServerMetadata)
from ..service import Service, get_service, read_body, require_api_key, with_timeout

SERVER_NAME = "deepcompress-serve"
EXTENSIONS = ["binary_tensor_data", "classification"]
HEADER_LENGTH = "inference-header-content-length"
MAX_BATCH_ROWS = 256
MAX_SIDE = 4096
VERSION = "1"

health = APIRouter(tags=["open inference protocol"])
router = APIRouter(tags=["open inference protocol"], dependencies=[Depends(require_api_key)])
ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 404, 413, 422, 503, 504)}
INFER_BODY = {"requestBody": {"required": True, "description": "an inference request as JSON, or (binary tensor "
                              "data extension) the JSON header followed by the raw tensors with the header's "
                              "length in `Inference-Header-Content-Length`",
                              "content": {"application/json": {"schema": {"$ref": "#/components/schemas/"
                                                                                  "InferenceRequest"}},
                                          "application/octet-stream": {"schema": {"type": "string",
                                                                                  "format": "binary"}}}}}


@health.get("/v2", response_model=ServerMetadata, summary="Server metadata")
async def server_metadata() -> dict:
    return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}


@health.get("/v2/health/live", response_model=Live, summary="Server liveness")
async def live() -> dict:
    return {"live": True}


@health.get("/v2/health/ready", response_model=Ready, responses={503: {"model": Ready}}, summary="Server readiness")
async def ready(service: Service = Depends(get_service)):
    ok = service.all_ready
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


def _model(service: Service, name: str, version: str | None) -> Model:
    if version is not None and version != VERSION:
        raise ServeError(404, f"model {name!r} has only version {VERSION}, not {version!r}")
    return service.model(name)


def _tensor_meta(model: Model) -> dict:
    return {"name": model.name, "versions": [VERSION], "platform": "onnxruntime_onnx",
            "inputs": [vars(t) for t in model.info.inputs], "outputs": [vars(t) for t in model.info.served_outputs]}


@router.get("/v2/models/{name}", response_model=ModelMetadata, responses=ERRORS, summary="Model metadata")
@router.get("/v2/models/{name}/versions/{version}", response_model=ModelMetadata, responses=ERRORS,
            include_in_schema=False)
async def model_metadata(name: str, version: str | None = None, service: Service = Depends(get_service)) -> dict:
    return _tensor_meta(_model(service, name, version))


@router.get("/v2/models/{name}/ready", response_model=ModelReady, responses=ERRORS, summary="Model readiness")
@router.get("/v2/models/{name}/versions/{version}/ready", response_model=ModelReady, responses=ERRORS,
            include_in_schema=False)
async def model_ready(name: str, version: str | None = None, service: Service = Depends(get_service)):
    model = _model(service, name, version)
    ok = service.ready.get(model.name, False)
    return JSONResponse({"name": model.name, "ready": ok}, status_code=200 if ok else 503)


def _split_body(request: Request, body: bytes) -> tuple[InferenceRequest, bytes]:
    header_len = request.headers.get(HEADER_LENGTH)
    if header_len is not None:
        try:
            n = int(header_len)
        except ValueError:
            raise ServeError(400, f"Inference-Header-Content-Length must be an integer, got {header_len!r}") from None
        if not 0 < n <= len(body):
            raise ServeError(400, f"Inference-Header-Content-Length {n} is outside the body's {len(body)} bytes")
        head, binary = body[:n], body[n:]
    else:
        head, binary = body, b""
    try:
        return InferenceRequest.model_validate_json(head), binary
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        raise ServeError(400, f"invalid inference request: {where + ': ' if where else ''}{err.get('msg')}") from None


def _input_tensor(model: Model, req: InferenceRequest, binary: bytes, max_values: int) -> np.ndarray:
    spec = model.info.inputs[0]
    if len(req.inputs) != 1:
        raise ServeError(400, f"model {model.name!r} takes one input ({spec.name!r}), got {len(req.inputs)}")
    inp = req.inputs[0]
    if inp.name != spec.name:
        raise ServeError(400, f"model {model.name!r} has no input {inp.name!r}; its input is {spec.name!r}")
    if inp.datatype != "FP32":
        raise ServeError(400, f"input {inp.name!r} must be FP32, got {inp.datatype!r}")
    shape = list(inp.shape)
    if len(shape) != len(spec.shape):
        raise ServeError(400, f"input {inp.name!r} has rank {len(spec.shape)} {spec.shape}, got shape {shape}")
    for i, (got, want) in enumerate(zip(shape, spec.shape)):
        if got < 1 or (want > 0 and got != want):
            raise ServeError(400, f"input {inp.name!r} shape {shape} does not fit the model's {spec.shape} "
                                  f"(axis {i})")
    if shape[0] > MAX_BATCH_ROWS or max(shape[2:]) > MAX_SIDE:
        raise ServeError(400, f"input shape {shape} too large (batch <= {MAX_BATCH_ROWS}, sides <= {MAX_SIDE})")
    count = math.prod(shape)
    if count > max_values:
        raise ServeError(413, f"input of {count:,} values is over the limit of {max_values:,}")
    params = inp.parameters or {}
    size = params.get("binary_data_size")
    if size is not None:
        if inp.data is not None:
            raise ServeError(400, f"input {inp.name!r} has both 'data' and binary_data_size")
        if not isinstance(size, int) or isinstance(size, bool) or size != count * 4:
            raise ServeError(400, f"input {inp.name!r}: binary_data_size must be {count * 4} bytes "
                                  f"(shape {shape} x 4 bytes), got {size!r}")
        if len(binary) != size:
            raise ServeError(400, f"binary section has {len(binary)} bytes, binary_data_size says {size}")
        x = np.frombuffer(binary, dtype="<f4").astype(np.float32).reshape(shape)
    else:
        if inp.data is None:
            raise ServeError(400, f"input {inp.name!r} has neither 'data' nor binary_data_size")
        if binary:
            raise ServeError(400, "binary data after the JSON header but no input declares binary_data_size")
        try:
            values = np.asarray(inp.data)
        except (ValueError, TypeError, RecursionError):
            raise ServeError(400, f"input {inp.name!r}: 'data' is not a regular array of numbers") from None
        if values.dtype.kind not in "fiu":
            raise ServeError(400, f"input {inp.name!r}: 'data' must hold numbers only")
        if values.size != count:
            raise ServeError(400, f"input {inp.name!r}: shape {shape} needs {count} values, 'data' has {values.size}")
        x = values.astype(np.float32).reshape(shape)
    if not np.isfinite(x).all():
        raise ServeError(400, f"input {inp.name!r} contains NaN or infinity")
    return np.ascontiguousarray(x)


def _classification(model: Model, logits: np.ndarray, k: int) -> list[list[str]]:
    """Triton's classification extension: per row the k best as "score:index:label"."""
    scores = softmax(logits) if model.info.task == "multiclass" else sigmoid(logits)
    out = []
    for row in scores:
        order = np.argsort(-row, kind="stable")[:k]
        out.append([f"{row[i]:f}:{int(i)}:{model.info.labels[int(i)]}" for i in order])
    return out


def _wanted_outputs(model: Model, req: InferenceRequest) -> list[RequestOutput]:
    """The outputs to answer with, checked: those the request names, or (the protocol's rule when
    it names none) every output the model has, each with default settings."""
    served = [o.name for o in model.info.served_outputs]
    wanted = req.outputs or [RequestOutput(name=n) for n in served]
    for out in wanted:
        if out.name not in served:
            raise ServeError(400, f"model {model.name!r} has no output {out.name!r}; its outputs: {', '.join(served)}")
        k = (out.parameters or {}).get("classification")
        if k is None:
            continue
        if out.name != model.output_name:
            raise ServeError(400, f"classification applies to the logits output {model.output_name!r}, "
                                  f"not {out.name!r}")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ServeError(400, f"classification must be a positive integer, got {k!r}")
    return wanted


def _bytes_tensor(strings: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in (s.encode() for s in strings))


@router.post("/v2/models/{name}/infer", response_model=InferenceResponse, responses=ERRORS,
             openapi_extra=INFER_BODY, summary="Run the model on a tensor")
@router.post("/v2/models/{name}/versions/{version}/infer", response_model=InferenceResponse, responses=ERRORS,
             openapi_extra=INFER_BODY, include_in_schema=False)
async def infer(name: str, request: Request, version: str | None = None, service: Service = Depends(get_service)):
    """Input: the model's FP32 input tensor (N, 3, H, W), already normalised (mean/std from
    `/model`). Outputs: those the request names, else every output of the model: `logits`
    (N, classes) FP32 (with the output parameter `classification: k`, the k best classes per row as
    BYTES "score:index:label") and, for a model that has one, `embedding` (N, D) FP32."""
    model = _model(service, name, version)

    async def work():
        with service.arriving(model):
            req, binary = _split_body(request, await read_body(request))
            x = _input_tensor(model, req, binary, service.settings.max_pixels * 3)
            wanted = _wanted_outputs(model, req)
        try:
            if any(out.name == model.info.embedding_output for out in wanted):
                _, logits, embedding = await service.embed(model, x)
            else:
                logits, embedding = (await service.infer(model, x)).logits, None
        except InferenceFailed as e:
            raise ServeError(400, f"the model cannot run on this input: {e}") from None
        return req, wanted, {model.output_name: logits, model.info.embedding_output: embedding}

    req, wanted, tensors = await with_timeout(work(), service.settings.timeout_s)
    binary_all = bool((req.parameters or {}).get("binary_data_output", False))
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for out in wanted:
        params = out.parameters or {}
        out_name, tensor = out.name, tensors[out.name]
        binary = bool(params.get("binary_data", binary_all))
        k = params.get("classification")
        if k is not None:
            k = min(k, model.info.num_classes)
            rows = _classification(model, tensor, k)
            entry = {"name": out_name, "datatype": "BYTES", "shape": [len(rows), k]}
            flat = [s for row in rows for s in row]
            payload = _bytes_tensor(flat) if binary else None
            data = flat
        else:
            if not np.isfinite(tensor).all():
                raise ServeError(400, "the input drove the model to non-finite outputs (values far out of range)")
            entry = {"name": out_name, "datatype": "FP32", "shape": list(tensor.shape)}
            payload = tensor.astype("<f4").tobytes() if binary else None
            data = tensor.reshape(-1).tolist()
        if binary:
            entry["parameters"] = {"binary_data_size": len(payload)}
            blobs.append(payload)
        else:
            entry["data"] = data
        outputs.append(entry)
    body = {"model_name": model.name, "model_version": VERSION, "outputs": outputs}
    if req.id is not None:
        body["id"] = req.id
    if not blobs:
        return JSONResponse(body)
    head = json.dumps(body, separators=(",", ":")).encode()
    return Response(head + b"".join(blobs), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head))})
