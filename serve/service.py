"""The running service: models, their inference queues, readiness and metrics, kept on
``app.state.service`` by the lifespan and handed to the routes by :func:`get_service`."""
from __future__ import annotations

import asyncio
import hmac
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .batching import BatchResult, InferenceFailed, InferenceQueue, QueueFull
from .engine import Model
from .errors import BodyTooLarge, ServeError
from .images import ImageError, load_image, open_image
from .metrics import Metrics
from .settings import Settings

log = logging.getLogger("serve")
# Images up to this many pixels are decoded on the event loop (well under a millisecond); larger
# ones go to a worker thread so a big photo never stalls other requests.
INLINE_PIXELS = 256 * 256
RETRY_AFTER_S = "1"


class Service:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = Metrics()
        self.models: dict[str, Model] = {}
        self.queues: dict[str, InferenceQueue] = {}
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
                                   expecting=lambda name=spec.name: self.preparing[name])
            await queue.start()
            self.queues[spec.name] = queue
        self._warmup = asyncio.create_task(self._warm_up())

    async def _warm_up(self) -> None:
        """One inference per model, and one at the largest micro-batch (ONNX Runtime sizes its
        memory arena for the biggest batch it has seen, so later batches do not grow the RSS)."""
        for name, model in self.models.items():
            for n in sorted({1, self.settings.max_batch}):
                await self.queues[name].submit(np.zeros((n, *model.image_shape), dtype=np.float32))
            self.ready[name] = True
            log.info("model %s ready (%s, %d classes)", name, model.info.task, model.info.num_classes)

    async def stop(self) -> None:
        if self._warmup and not self._warmup.done():
            self._warmup.cancel()
        for queue in self.queues.values():
            await queue.stop()
        if self._image_pool:
            self._image_pool.shutdown(wait=False, cancel_futures=True)

    def _batch_observer(self, name: str):
        def observe(size: int, inference_ms: float) -> None:
            self.metrics.batch_size.labels(name).observe(size)
        return observe

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
        queue = self.queues[model.name]
        self.metrics.queue_depth.labels(model.name).set(queue.depth)
        try:
            return await queue.submit(batch)
        except QueueFull as e:
            raise ServeError(503, f"server busy: {e}; retry later", {"Retry-After": RETRY_AFTER_S}) from None
        finally:
            self.metrics.queue_depth.labels(model.name).set(queue.depth)

    @contextmanager
    def arriving(self, model: Model):
        """Marks a request for ``model`` that is reading or decoding its input: the micro-batcher
        waits for such requests (up to max_wait_ms), never for requests that do not exist."""
        self.preparing[model.name] += 1
        try:
            yield
        finally:
            self.preparing[model.name] -= 1

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
                inline = image.width * image.height <= INLINE_PIXELS
                image = load_image(image) if inline else await loop.run_in_executor(self._image_pool, load_image, image)
            except ImageError as e:
                raise ServeError(e.status, which + str(e)) from None
            t1 = time.perf_counter()
            try:
                arrays.append(model.transform(image) if inline else
                              await loop.run_in_executor(self._image_pool, model.transform, image))
            except (OSError, ValueError) as e:  # a mode Pillow cannot convert, say
                raise ServeError(400, f"{which}cannot convert image ({image.mode}): {e}") from None
            t2 = time.perf_counter()
            decode_ms += (t1 - t0) * 1000.0
            preprocess_ms += (t2 - t1) * 1000.0
        batch = arrays[0][None] if len(arrays) == 1 else np.stack(arrays)
        return batch, decode_ms, preprocess_ms


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
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0 or declared > self.limit:
                    from .errors import error_response

                    message = (f"request body larger than the {self.limit:,}-byte limit" if declared > 0
                               else "invalid Content-Length header")
                    response = error_response(413 if declared > 0 else 400, message)
                    await response(scope, receive, send)
                    return
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited_receive, send)


async def with_timeout(coro, seconds: float):
    """Await ``coro``; a 504 after ``seconds`` (the per-request timeout). ``asyncio.timeout``
    (Python 3.11+) cancels in place; ``wait_for`` would start a task per request."""
    try:
        if hasattr(asyncio, "timeout"):
            async with asyncio.timeout(seconds):
                return await coro
        return await asyncio.wait_for(coro, seconds)
    except (asyncio.TimeoutError, TimeoutError):
        raise ServeError(504, f"request took longer than the {seconds:g} s timeout") from None


__all__ = ["Service", "get_service", "require_api_key", "read_body", "BodyLimitMiddleware", "with_timeout",
           "InferenceFailed"]
