"""Operations: liveness, readiness (after a warm-up inference), model facts and Prometheus metrics."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, Response

from ..engine import Model
from ..schemas import ErrorBody, Health, ModelDetails, ModelList, Readiness
from ..service import Service, get_service, require_api_key

health = APIRouter(tags=["operations"])
router = APIRouter(tags=["operations"], dependencies=[Depends(require_api_key)])


@health.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> dict:
    return {"status": "ok"}


@health.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}},
            summary="Readiness: every model loaded and warmed up")
async def readyz(service: Service = Depends(get_service)):
    ok = service.all_ready
    return JSONResponse({"ready": ok, "models": dict(service.ready)}, status_code=200 if ok else 503)


def details(service: Service, model: Model) -> dict:
    info = model.info
    return {"name": info.name, "default": info.name == service.settings.default_model, "file": info.path.name,
            "file_bytes": info.file_bytes, "sha256": info.sha256, "task": info.task,
            "num_classes": info.num_classes, "labels": info.labels, "input_size": info.input_size,
            "mean": info.mean, "std": info.std, "interpolation": info.interpolation, "threshold": info.threshold,
            "arch": info.arch, "arch_kwargs": info.arch_kwargs, "history": info.history,
            "has_metadata": info.has_metadata, "inputs": [vars(t) for t in info.inputs],
            "outputs": [vars(t) for t in info.outputs], "threads": model.threads,
            "max_batch": service.settings.max_batch}


@router.get("/model", response_model=ModelDetails, responses={404: {"model": ErrorBody}},
            summary="One model's metadata: labels, preprocessing, compression history")
async def model_details(service: Service = Depends(get_service),
                        model: str | None = Query(None, max_length=64, description="default: the first model")):
    return details(service, service.model(model))


@router.get("/models", response_model=ModelList, summary="Every served model")
async def model_list(service: Service = Depends(get_service)):
    return {"default": service.settings.default_model,
            "models": [details(service, m) for m in service.models.values()]}


@router.get("/metrics", summary="Prometheus metrics (text exposition format)",
            responses={200: {"content": {"text/plain": {}}}})
async def metrics(service: Service = Depends(get_service)):
    body, content_type = service.metrics.exposition()
    return Response(body, media_type=content_type)
