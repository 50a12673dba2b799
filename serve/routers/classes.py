"""Few-shot classes without retraining: ``POST /v1/classes`` enrols a class from a few images
(its prototype: the mean of their L2-normalised embeddings), ``GET /v1/classes`` lists them,
``DELETE /v1/classes/{name}`` removes one; ``POST /predict?mode=prototype`` classifies by the
nearest prototype. ``?model=NAME`` picks the model, as on ``/predict``. Needs a model with an
``embedding`` output (``compress export`` adds it); see :mod:`serve.prototypes` for the storage."""
from __future__ import annotations

from urllib.parse import quote

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from ..errors import ServeError
from ..prototypes import MAX_CLASSES, ClassSet, check_class_name, make_prototype
from ..schemas import ClassDeleted, ClassEnrolled, ClassList, ErrorBody
from ..service import Service, get_service, require_api_key, with_timeout

router = APIRouter(tags=["few-shot classes"], dependencies=[Depends(require_api_key)])

ENROL_BODY = {"requestBody": {"required": True, "description": "a multipart form: the class name in field `name`, "
                              "one or more images of it, each in a field named `files` (or `file`)",
                              "content": {"multipart/form-data": {"schema": {
                                  "type": "object", "required": ["name", "files"],
                                  "properties": {"name": {"type": "string", "maxLength": 100},
                                                 "files": {"type": "array",
                                                           "items": {"type": "string", "format": "binary"}}}}}}}}
ERRORS = {code: {"model": ErrorBody, "description": text} for code, text in (
    (400, "bad class name, no image, an unusable image or a malformed form"),
    (401, "missing or wrong bearer token (with --api-key)"), (404, "no such model (or class, for DELETE)"),
    (409, "the name is enrolled already (use ?replace=true), or the model has no embedding output"),
    (413, "body or image too large"), (415, "not a multipart form, or an image format not accepted"),
    (422, "invalid query parameter"), (503, "server busy, or the classes cannot be saved (see --classes-dir)"),
    (504, "the request took longer than the timeout"))}

ModelQuery = Query(None, max_length=64, description="model name (default: the first model served)")


async def _enrol_form(request: Request, max_files: int) -> tuple[str, list[bytes]]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "multipart/form-data":
        raise ServeError(415, f"content type {ctype!r}: /v1/classes takes a multipart form with the class name in "
                              "field 'name' and the images in fields named 'files'")
    form = await request.form(max_files=max_files, max_fields=8)
    names = form.getlist("name")
    if len(names) != 1 or not isinstance(names[0], str):
        raise ServeError(400, "the form needs exactly one text field 'name' (the class name)")
    uploads = [v for key, v in form.multi_items() if key in ("files", "file") and isinstance(v, UploadFile)]
    if not uploads:
        raise ServeError(400, "the form has no image: put each image of the class in a field named 'files'")
    return names[0], [await u.read() for u in uploads]


def _check_embeddings(embedding: np.ndarray) -> None:
    norms = np.linalg.norm(embedding.astype(np.float64), axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if len(bad):
        raise ServeError(400, f"image {int(bad[0]) + 1} gives an all-zero or non-finite embedding: it has no "
                              "direction to enrol")


@router.post("/v1/classes", status_code=201, response_model=ClassEnrolled, responses=ERRORS,
             openapi_extra=ENROL_BODY, summary="Enrol a few-shot class from a few images")
async def enrol_class(request: Request, service: Service = Depends(get_service), model: str | None = ModelQuery,
                      replace: bool = Query(False, description="replace a class of the same name (else 409)")):
    """The images run through the model once; the class's prototype is the mean of their
    L2-normalised embeddings, normalised again. It is saved (atomically) before the answer, and
    `POST /predict?mode=prototype` can pick it from then on."""
    m = service.model(model)
    store = service.store(m)

    async def work():
        with service.arriving(m):
            name, images = await _enrol_form(request, service.settings.max_files)
            name = check_class_name(name)
            if name in store.refresh() and not replace:
                raise _duplicate(name)
            batch, _, _ = await service.prepare(m, images)
        _, _, embedding = await service.embed(m, batch)
        return name, len(images), embedding

    name, shots, embedding = await with_timeout(work(), service.settings.timeout_s)
    _check_embeddings(embedding)
    prototype = make_prototype(embedding)
    replaced = False

    def edit(current: ClassSet) -> ClassSet:  # under the store's locks, on the latest classes
        nonlocal replaced
        replaced = name in current
        if replaced and not replace:
            raise _duplicate(name)
        if not replaced and len(current) >= MAX_CLASSES:
            raise ServeError(409, f"model {m.name!r} has {len(current)} classes, the limit; delete some first")
        return current.with_class(name, prototype, shots)

    classes = await store.change(edit)
    service.metrics.enrolments.labels(m.name).inc()
    body = {"model": m.name, "name": name, "shots": shots, "index": classes.names.index(name),
            "replaced": replaced, "classes": len(classes)}
    return JSONResponse(body, status_code=201)


def _duplicate(name: str) -> ServeError:
    return ServeError(409, f"class {name!r} is enrolled already: POST with ?replace=true to replace it, or "
                           f"DELETE /v1/classes/{quote(name, safe='')} first")


@router.get("/v1/classes", response_model=ClassList, responses=ERRORS, summary="The enrolled few-shot classes")
async def list_classes(service: Service = Depends(get_service), model: str | None = ModelQuery):
    m = service.model(model)
    store = service.store(m)
    classes = store.refresh()
    return {"model": m.name, "embedding_dim": store.embedding_dim,
            "classes": [{"name": n, "shots": s} for n, s in zip(classes.names, classes.shots)]}


@router.delete("/v1/classes/{name:path}", response_model=ClassDeleted, responses=ERRORS,
               summary="Remove a few-shot class")
async def delete_class(name: str, service: Service = Depends(get_service), model: str | None = ModelQuery):
    """The name as enrolled, percent-encoded in the path (``/`` as ``%2F``)."""
    m = service.model(model)
    store = service.store(m)
    if name not in store.refresh():
        raise _unknown(name, m.name)

    def edit(current: ClassSet) -> ClassSet:
        if name not in current:
            raise _unknown(name, m.name)
        return current.without(name)

    classes = await store.change(edit)
    return {"model": m.name, "deleted": name, "classes": len(classes)}


def _unknown(name: str, model: str) -> ServeError:
    return ServeError(404, f"no class named {name[:100]!r} enrolled for model {model!r}")
