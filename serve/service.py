"""The running service: models, their inference queues, readiness and metrics, kept on
``app.state.service`` by the lifespan and handed to the routes by :func:`get_service`."""
from __future__ import annotations

import asyncio
import hmac
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .batching import BatchResult, InferenceFailed, InferenceQueue, QueueFull
from .engine import Model
from .errors import BodyTooLarge, ServeError
from .images import ImageError, load_image, open_image
from .metrics import Metrics
from .prototypes import PrototypeStore, classes_path
from .settings import Settings

log = logging.getLogger("serve")
# Images up to this many pixels are decoded on the event loop (well under a millisecond); larger
# ones go to a worker thread so a big photo never stalls other requests, unless the request is
# the only one the server is handling and the image is at most IDLE_INLINE_PIXELS (a 640x480 JPEG
# decodes and resizes in a few ms): then the hop to the pool and back would only add latency.
INLINE_PIXELS = 256 * 256
IDLE_INLINE_PIXELS = 640 * 480
RETRY_AFTER_S = "1"


class Service:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = Metrics()
        self.models: dict[str, Model] = {}
        self.queues: dict[str, InferenceQueue] = {}
        # models with an embedding output: a second queue whose calls return logits and embedding
        # (few-shot enrolment, prototype predictions, OIP requests for the embedding), and the
        # enrolled classes; the plain /predict path and its queue stay as they are
        self.feature_queues: dict[str, InferenceQueue] = {}
        self.stores: dict[str, PrototypeStore] = {}
        self.ready: dict[str, bool] = {m.name: False for m in settings.models}
        self.preparing: dict[str, int] = {m.name: 0 for m in settings.models}  # requests being decoded
        self._warmup: asyncio.Task | None = None
        # Decoding and resizing big images happens here, off the event loop. A small fixed pool
        # rather than anyio's 40 threads: every thread that mallocs gets its own glibc arena, and
        # 40 of them made the server's RSS grow by a third under a JPEG load test.
        self._image_pool: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        """Load every model (one ONNX Runtime session each), start the queues, then warm up in
        the background; ``/readyz`` turns 200 once every model has run one inference."""
        s = self.settings
        self._image_pool = ThreadPoolExecutor(max_workers=max(2, s.threads), thread_name_prefix="decode")
        for spec in s.models:
            model = Model(spec.name, spec.path, s.threads, spinning=s.ort_spinning)
            self.models[spec.name] = model
            queue = InferenceQueue(model.run, name=spec.name, max_batch=s.max_batch, max_wait_ms=s.max_wait_ms,
                                   max_queue=s.max_queue, on_batch=self._batch_observer(spec.name),
                                   expecting=lambda name=spec.name: self.preparing[name],
                                   inline_max_ms=s.inline_max_ms, image_shape=model.image_shape,
                                   alone=self._alone, on_depth=self.metrics.queue_depth.labels(spec.name).set)
            await queue.start()
            self.queues[spec.name] = queue
            if model.has_embedding:
                features = InferenceQueue(model.run_features, name=f"{spec.name}-features", max_batch=s.max_batch,
                                          max_wait_ms=s.max_wait_ms, max_queue=s.max_queue,
                                          on_batch=self._batch_observer(spec.name),
                                          expecting=lambda name=spec.name: self.preparing[name],
                                          inline_max_ms=s.inline_max_ms, image_shape=model.image_shape,
                                          alone=self._alone)
                await features.start()
                self.feature_queues[spec.name] = features
                store = PrototypeStore(spec.name, classes_path(spec.name, spec.path, s.classes_dir),
                                       model_sha256=model.info.sha256, embedding_dim=model.info.embedding_dim)
                store.load()
                store.check_writable()
                self.stores[spec.name] = store
        self._warmup = asyncio.create_task(self._warm_up())

    async def _warm_up(self) -> None:
        """Inferences per model: a first one (slow: ONNX Runtime allocates; its time is not kept
        for the inline rule), one of one image (the first time the inline rule judges the model
        by), and one at the largest micro-batch (ONNX Runtime sizes its memory arena for the
        biggest batch it has seen, so later batches do not grow the RSS)."""
        for name, model in self.models.items():
            queue = self.queues[name]
            await queue.submit(np.zeros((1, *model.image_shape), dtype=np.float32))
            queue.forget_timings()
            for n in sorted({1, self.settings.max_batch}):
                await queue.submit(np.zeros((n, *model.image_shape), dtype=np.float32))
            if name in self.feature_queues:  # the inline rule's timings for the features calls
                await self.feature_queues[name].submit(np.zeros((1, *model.image_shape), dtype=np.float32))
            self.ready[name] = True
            log.info("model %s ready (%s, %d classes)", name, model.info.task, model.info.num_classes)

    async def stop(self) -> None:
        if self._warmup and not self._warmup.done():
            self._warmup.cancel()
        for queue in (*self.queues.values(), *self.feature_queues.values()):
            await queue.stop()
        if self._image_pool:
            self._image_pool.shutdown(wait=False, cancel_futures=True)

    def _batch_observer(self, name: str):
        batch_size = self.metrics.batch_size.labels(name)
        calls = {True: self.metrics.inference_calls.labels(name, "inline"),
                 False: self.metrics.inference_calls.labels(name, "inference")}

        def observe(size: int, inference_ms: float, inline: bool) -> None:
            batch_size.observe(size)
            calls[inline].inc()
        return observe

    def _alone(self) -> bool:
        """No HTTP request but the caller's is being handled (warm-up calls have none)."""
        return self.metrics.active <= 1

    async def _alone_after_yield(self) -> bool:
        """:meth:`_alone`, asked after yielding once to the loop so that requests already received
        have started (and count)."""
        await asyncio.sleep(0)
        return self._alone()

    @property
    def all_ready(self) -> bool:
        return all(self.ready.values())

    def model(self, name: str | None) -> Model:
        name = name or self.settings.default_model
        try:
            return self.models[name]
        except KeyError:
            raise ServeError(404, f"no model named {name!r}; served: {', '.join(self.models)}") from None

    async def infer(self, model: Model, batch: np.ndarray) -> BatchResult:
        try:
            return await self.queues[model.name].submit(batch)
        except QueueFull as e:
            raise ServeError(503, f"server busy: {e}; retry later", {"Retry-After": RETRY_AFTER_S}) from None

    def store(self, model: Model) -> PrototypeStore:
        """The few-shot classes of ``model``; 409 when it has no embedding output."""
        store = self.stores.get(model.name)
        if store is None:
            raise ServeError(409, f"model {model.name!r} has no 'embedding' output, so it cannot take few-shot "
                                  "classes: export it again with `compress export` (it adds one unless --no-embedding)")
        return store

    async def embed(self, model: Model, batch: np.ndarray) -> tuple[BatchResult, np.ndarray, np.ndarray]:
        """(the call's result, logits (n, classes), embeddings (n, D)) for a model with an embedding."""
        try:
            result = await self.feature_queues[model.name].submit(batch)
        except QueueFull as e:
            raise ServeError(503, f"server busy: {e}; retry later", {"Retry-After": RETRY_AFTER_S}) from None
        logits, embedding = model.split_features(result.logits)
        return result, logits, embedding

    def arriving(self, model: Model) -> "_Arriving":
        """Marks a request for ``model`` that is reading or decoding its input (a context manager):
        the micro-batcher waits for such requests (up to max_wait_ms), never for requests that do
        not exist, and the inline rule runs nothing on the event loop while there are any."""
        return _Arriving(self.preparing, model.name)

    async def prepare(self, model: Model, images: list[bytes]) -> tuple[np.ndarray, float, float]:
        """Decode and preprocess images → (batch (n, C, H, W), decode ms, preprocess ms).

        Raises :class:`ServeError` (4xx) for an image that cannot be used, naming which one when
        there are several."""
        return await self._prepare(model, images)

    async def _prepare(self, model: Model, images: list[bytes]) -> tuple[np.ndarray, float, float]:
        loop = asyncio.get_running_loop()
        decode_ms = preprocess_ms = 0.0
        arrays = []
        for i, data in enumerate(images):
            which = f"image {i + 1}: " if len(images) > 1 else ""
            t0 = time.perf_counter()
            try:
                image = open_image(data, max_pixels=self.settings.max_pixels)
                pixels = image.width * image.height
                if pixels <= INLINE_PIXELS or (pixels <= IDLE_INLINE_PIXELS and await self._alone_after_yield()):
                    array, t1 = decode_and_transform(model.transform, image)
                else:  # both stages in one trip to the pool: one thread hop, not two
                    array, t1 = await loop.run_in_executor(self._image_pool, decode_and_transform,
                                                           model.transform, image)
            except ImageError as e:
                raise ServeError(e.status, which + str(e)) from None
            except CannotConvert as e:  # a mode Pillow cannot convert, say
                raise ServeError(400, f"{which}{e}") from None
            t2 = time.perf_counter()
            arrays.append(array)
            decode_ms += (t1 - t0) * 1000.0
            preprocess_ms += (t2 - t1) * 1000.0
        batch = arrays[0][None] if len(arrays) == 1 else np.stack(arrays)
        return batch, decode_ms, preprocess_ms


class CannotConvert(ValueError):
    """The image decoded but the model's transform failed on it (a 400)."""


def decode_and_transform(transform, image) -> tuple[np.ndarray, float]:
    """Decode ``image`` (opened, header checked) and transform it → (array, ``perf_counter`` stamp
    between the two stages). Raises :class:`ImageError` or :class:`CannotConvert`."""
    image = load_image(image)
    loaded = time.perf_counter()
    try:
        return transform(image), loaded
    except (OSError, ValueError) as e:
        raise CannotConvert(f"cannot convert image ({image.mode}): {e}") from None


class _Arriving:
    """``with service.arriving(model):`` (a class: cheaper per request than ``@contextmanager``)."""

    __slots__ = ("counts", "name")

    def __init__(self, counts: dict[str, int], name: str):
        self.counts, self.name = counts, name

    def __enter__(self) -> None:
        self.counts[self.name] += 1

    def __exit__(self, *exc) -> None:
        self.counts[self.name] -= 1


async def get_service(request: Request) -> Service:
    # async on purpose: FastAPI runs a plain ``def`` dependency in anyio's thread pool, a thread
    # hop on every request (measured 0.17-0.25 ms of the HTTP overhead at concurrency 1)
    return request.app.state.service


_bearer = HTTPBearer(auto_error=False, description="needed when the server runs with --api-key")


async def require_api_key(request: Request,
                          credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    """401 unless the request carries ``Authorization: Bearer <key>`` (when a key is set).
    Compared in constant time."""
    key = request.app.state.settings.api_key
    if key is None:
        return
    given = credentials.credentials if credentials else ""
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), key.encode("utf-8")):
        raise ServeError(401, "missing or wrong bearer token (Authorization: Bearer <key>)",
                         {"WWW-Authenticate": "Bearer"})


async def read_body(request: Request) -> bytes:
    """The whole body; the size limit is enforced by :class:`BodyLimitMiddleware` while it streams."""
    from starlette.requests import ClientDisconnect

    try:
        return await request.body()
    except ClientDisconnect:
        raise ServeError(400, "client disconnected before sending the whole body") from None


class BodyLimitMiddleware:
    """Refuses a declared ``Content-Length`` above the limit before reading anything, and stops a
    body (chunked or lying about its length) as soon as it passes the limit: 413 either way."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = refuse_declared_body(scope, self.limit)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, limit_body(receive, self.limit), send)


def refuse_declared_body(scope, limit: int):
    """The error response for a ``Content-Length`` header over ``limit`` (413) or not a number
    (400); None when the header is absent or fine."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                declared = -1
            if declared < 0 or declared > limit:
                from .errors import error_response

                message = (f"request body larger than the {limit:,}-byte limit" if declared > 0
                           else "invalid Content-Length header")
                return error_response(413 if declared > 0 else 400, message)
    return None


def limit_body(receive, limit: int):
    """``receive`` that raises :class:`BodyTooLarge` (a 413) once the body passes ``limit`` bytes."""
    seen = 0

    async def limited_receive():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    return limited_receive


async def with_timeout(coro, seconds: float):
    """Await ``coro``; a 504 after ``seconds`` (the per-request timeout). ``asyncio.timeout``
    (Python 3.11+) cancels in place; ``wait_for`` would start a task per request. An inference run
    inline on the event loop cannot be interrupted: when it ends past the deadline, the answer is
    the same 504 (late rather than on time, by at most one call the inline rule let through)."""
    deadline = time.monotonic() + seconds
    try:
        if hasattr(asyncio, "timeout"):
            async with asyncio.timeout(seconds):
                result = await coro
        else:
            result = await asyncio.wait_for(coro, seconds)
    except (asyncio.TimeoutError, TimeoutError):
        pass
    else:
        if time.monotonic() < deadline:
            return result
    raise ServeError(504, f"request took longer than the {seconds:g} s timeout")


__all__ = ["Service", "get_service", "require_api_key", "read_body", "BodyLimitMiddleware", "with_timeout",
           "InferenceFailed"]
