"""The per-request latency work on the service, and that it changed no answer:

- ``FastPredict`` answers plain ``POST /predict`` requests in front of the middleware stack;
  every request here gets the same status, body (bar the timings) and headers with and without
  it, the same metrics, it takes exactly the requests it claims, and the OpenAPI schema is
  unchanged;
- no dependency of the routes is a plain function (FastAPI would run it in a worker thread: a
  thread hop per request);
- ``InferenceThread``: results, stamps, errors, cancelled requests still counted until their call
  ends, shutdown after the calls already submitted;
- inline inference: a lone one-image request of a fast model runs on the event loop thread, any
  other (together with others, several images, another shape, a slow model, a slow call in the
  window, a busy server) on the inference thread, with the same answers; a timeout is still 504;
  mid-sized images are decoded on the loop only when the request is alone;
- ``top_predictions`` against the numpy softmax / sigmoid reference.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import re
import threading
import time

import numpy as np
import pytest
from PIL import Image

from serve import ModelSpec, Settings, create_app
from serve.batching import InferenceQueue, InferenceThread
from tests.test_serve import digit_png, digits_onnx, multilabel_onnx, wait_ready  # noqa: F401

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")]

KEY = "s3cret-key-123"


def _apps(digits, ml, **settings):
    """The service as built (with the fast path) and the same app without it."""
    specs = (ModelSpec("digits", digits), ModelSpec("ml", ml))
    fast = create_app(Settings(models=specs, max_upload_bytes=64 * 1024, **settings))
    plain = create_app(Settings(models=specs, max_upload_bytes=64 * 1024, **settings))
    plain.fast_predict = None
    assert fast.fast_predict is not None
    return fast, plain


def _counting(app) -> dict:
    """Count the requests the fast path answers."""
    fast = app.fast_predict
    seen = {"n": 0}
    inner = fast.serve

    async def counted(*args):
        seen["n"] += 1
        await inner(*args)

    fast.serve = counted
    return seen


def _comparable(r) -> tuple:
    headers = {k: v for k, v in r.headers.items() if k not in ("server-timing", "content-length", "date")}
    try:
        body = r.json()
    except ValueError:
        body = r.text
    if isinstance(body, dict) and "timing_ms" in body:
        assert set(body.pop("timing_ms")) == {"decode", "preprocess", "queue", "inference", "total"}
        assert r.headers["server-timing"].count(";dur=") == 5
    return r.status_code, headers, body


# (query string, taken by the fast route?)
QUERIES = [
    ("", True), ("k=3", True), ("k=1", True), ("k=1000", True), ("k=10&other=x", True), ("K=3", True),
    ("threshold=0.5", True), ("threshold=.25", True), ("model=ml", True), ("model=ml&threshold=0.2", True),
    ("model=ml&k=2&threshold=0.01", True), ("model=digits&k=2", True), ("model=nope", True),
    ("k=1001", False), ("k=0", False), ("k=03", False), ("k=%2B3", False), ("k=3.0", False), ("k=", False),
    ("k=%203", False), ("k=3&k=4", False), ("k=many", False), ("threshold=0", False), ("threshold=0.0", False),
    ("threshold=1", False), ("threshold=1.5", False), ("threshold=1e-3", False), ("threshold=-0.5", False),
    ("threshold=", False), ("model=", False), ("model=%20digits", False), ("model=" + "a" * 65, False),
    ("model=a%2Fb", False), ("model=ml&model=digits", False),
]


def test_fast_route_answers_exactly_as_the_fastapi_route(digits_onnx, multilabel_onnx, digit_png):  # noqa: F811
    from fastapi.testclient import TestClient

    fast, plain = _apps(digits_onnx, multilabel_onnx)
    seen = _counting(fast)
    bodies = {"raw png": lambda: dict(content=digit_png, headers={"content-type": "image/png"}),
              "octet-stream": lambda: dict(content=digit_png, headers={"content-type": "application/octet-stream"}),
              "multipart": lambda: dict(files={"file": ("d.png", digit_png, "image/png")}),
              "junk": lambda: dict(content=b"junk", headers={"content-type": "image/png"}),
              "json": lambda: dict(json={"image": "x"}),
              "too big": lambda: dict(content=b"\x89PNG" + b"0" * 70_000, headers={"content-type": "image/png"}),
              "bad length": lambda: dict(content=digit_png, headers={"content-type": "image/png",
                                                                      "content-length": "x"}),
              "chunked too big": lambda: dict(content=_chunks(digit_png + b"0" * 70_000),  # no Content-Length
                                              headers={"content-type": "image/png"})}
    with TestClient(fast, raise_server_exceptions=False) as a, TestClient(plain, raise_server_exceptions=False) as b:
        wait_ready(a)
        wait_ready(b)
        for query, taken in QUERIES:
            for name, kwargs in bodies.items():
                before = seen["n"]
                ra, rb = a.post(f"/predict?{query}", **kwargs()), b.post(f"/predict?{query}", **kwargs())
                assert _comparable(ra) == _comparable(rb), (query, name, ra.text, rb.text)
                assert seen["n"] - before == int(taken), (query, name)
        assert a.post("/predict?k=3", content=digit_png).json()["predictions"][0]["label"] == \
            b.post("/predict?k=3", content=digit_png).json()["predictions"][0]["label"]
        for method in ("get", "put", "delete"):  # other methods: the FastAPI route's 405
            before = seen["n"]
            assert _comparable(getattr(a, method)("/predict")) == _comparable(getattr(b, method)("/predict"))
            assert seen["n"] == before
        assert a.get("/openapi.json").json() == b.get("/openapi.json").json()
        metrics = a.get("/metrics").text
        assert 'serve_requests_total{method="POST",route="/predict",status="200"}' in metrics
        assert _counts(metrics) == _counts(b.get("/metrics").text)


def _chunks(data: bytes, size: int = 16 * 1024):
    """A body without Content-Length (chunked), which only the streaming limit can stop."""
    for i in range(0, len(data), size):
        yield data[i:i + size]


def _counts(metrics: str) -> dict[str, float]:
    """The request and stage counters of a /metrics text that the predict requests moved (not the
    timings, not /readyz, which each client polls as often as it takes)."""
    wanted = ("serve_requests_total{", "serve_request_duration_seconds_count{", "serve_stage_duration_seconds_count{",
              "serve_batch_size_count{", "serve_requests_in_flight ")
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
            if line.startswith(wanted) and "/readyz" not in line}


def test_fast_path_answers_a_fault_as_the_stack_does(digits_onnx, multilabel_onnx, digit_png, monkeypatch):  # noqa: F811
    """A bug in the request's code: the 500 JSON answer, and the exception raised for the server to log."""
    from fastapi.testclient import TestClient

    import serve.routers.predict as predict

    def broken(*args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(predict, "top_predictions", broken)
    fast, plain = _apps(digits_onnx, multilabel_onnx)
    seen = _counting(fast)
    with TestClient(fast, raise_server_exceptions=False) as a, TestClient(plain, raise_server_exceptions=False) as b:
        wait_ready(a)
        wait_ready(b)
        ra, rb = a.post("/predict", content=digit_png), b.post("/predict", content=digit_png)
        assert ra.status_code == 500 and ra.json() == {"error": "internal error (ZeroDivisionError)"}
        assert _comparable(ra) == _comparable(rb) and seen["n"] == 1
        assert _counts(a.get("/metrics").text) == _counts(b.get("/metrics").text)
    for app in (fast, plain):
        with TestClient(app) as c:
            wait_ready(c)
            with pytest.raises(ZeroDivisionError):
                c.post("/predict", content=digit_png)


@pytest.mark.parametrize("authorization, taken, status", [
    (None, False, 401), (f"Bearer {KEY}", True, 200), ("Bearer wrong-key-1234", False, 401),
    (f"bearer {KEY}", False, 200), (f"Bearer  {KEY}", False, 200), (f"Basic {KEY}", False, 401),
    (f"Bearer {KEY}x", False, 401), ("Bearer", False, 401),
])
def test_fast_route_with_an_api_key(digits_onnx, multilabel_onnx, digit_png, authorization, taken,  # noqa: F811
                                    status):
    from fastapi.testclient import TestClient

    fast, plain = _apps(digits_onnx, multilabel_onnx, api_key=KEY)
    seen = _counting(fast)
    headers = {"content-type": "image/png", **({"authorization": authorization} if authorization else {})}
    with TestClient(fast, raise_server_exceptions=False) as a, TestClient(plain, raise_server_exceptions=False) as b:
        ra, rb = a.post("/predict", content=digit_png, headers=headers), b.post("/predict", content=digit_png,
                                                                             headers=headers)
        assert ra.status_code == status
        assert _comparable(ra) == _comparable(rb)
        assert seen["n"] == int(taken)


def test_two_authorization_headers_go_to_the_fastapi_route(digits_onnx, multilabel_onnx, digit_png):  # noqa: F811
    fast, _ = _apps(digits_onnx, multilabel_onnx, api_key=KEY)
    scope = {"type": "http", "method": "POST", "path": "/predict", "root_path": "", "query_string": b"",
             "headers": [(b"authorization", f"Bearer {KEY}".encode())] * 2}
    assert fast.fast_predict.matches(scope) is None
    scope["headers"] = scope["headers"][:1]
    assert fast.fast_predict.matches(scope) == (None, None, None)


def test_no_route_dependency_runs_in_a_worker_thread(digits_onnx):  # noqa: F811
    """A plain ``def`` dependency costs a thread hop per request (0.2 ms measured): all are async."""
    from fastapi.routing import APIRoute

    from serve.routers import oip, ops, predict

    def calls(dependant):
        for sub in dependant.dependencies:
            yield sub.call
            yield from calls(sub)

    routes = [r for router in (predict.router, oip.health, oip.router, ops.health, ops.router)
              for r in router.routes if isinstance(r, APIRoute)]
    assert {"/predict", "/predict/batch", "/v2/models/{name}/infer", "/metrics"} <= {r.path for r in routes}
    for route in routes:
        for call in calls(route.dependant):
            target = call if inspect.isfunction(call) else type(call).__call__
            assert inspect.iscoroutinefunction(target), (route.path, call)


# --- the inference thread ---------------------------------------------------------------------

def test_inference_thread_runs_in_order_off_the_loop():
    seen = []

    def run(batch):
        seen.append((threading.current_thread().name, float(batch[0, 0, 0, 0])))
        return batch.sum(axis=(1, 2, 3))[:, None]

    async def main():
        worker = InferenceThread(run, "ort-test")
        try:
            futures = [worker.submit(np.full((1, 1, 2, 2), i, np.float32)) for i in range(5)]
            results = await asyncio.gather(*futures)
        finally:
            worker.stop()
        return results, worker

    results, worker = asyncio.run(main())
    assert [name for name, _ in seen] == ["ort-test"] * 5 and [v for _, v in seen] == [0, 1, 2, 3, 4]
    for i, (logits, started, ended) in enumerate(results):
        assert logits.tolist() == [[4.0 * i]] and started <= ended
    assert not worker._thread.is_alive()


def test_inference_thread_hands_errors_to_the_request():
    def run(batch):
        raise RuntimeError("bad tensor\nsecond line")

    async def main():
        queue = InferenceQueue(run, name="t")
        await queue.start()
        try:
            await queue.submit(np.zeros((1, 3, 2, 2), np.float32))
        finally:
            await queue.stop()

    from serve.batching import InferenceFailed

    with pytest.raises(InferenceFailed, match="second line"):
        asyncio.run(main())


def test_a_request_that_gives_up_is_counted_until_its_call_ends():
    gate = threading.Event()

    def run(batch):
        gate.wait(5)
        return np.zeros((len(batch), 2), np.float32)

    async def main():
        queue = InferenceQueue(run, name="t", max_queue=1)
        await queue.start()
        try:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await queue.submit(np.zeros((1, 3, 2, 2), np.float32))
            assert queue.depth == 1  # the call still holds the session
            from serve.batching import QueueFull

            with pytest.raises(QueueFull):
                await queue.submit(np.zeros((1, 3, 2, 2), np.float32))
            gate.set()
            for _ in range(200):
                if queue.depth == 0:
                    break
                await asyncio.sleep(0.01)
            assert queue.depth == 0
            result = await queue.submit(np.zeros((1, 3, 2, 2), np.float32))
            assert result.batch_size == 1 and result.inference_ms >= 0 and result.queue_ms >= 0
        finally:
            gate.set()
            await queue.stop()

    asyncio.run(main())


def test_stop_finishes_the_calls_already_submitted():
    done = []

    def run(batch):
        time.sleep(0.05)
        done.append(1)
        return batch

    async def main():
        worker = InferenceThread(run, "ort-stop")
        futures = [worker.submit(np.zeros((1,), np.float32)) for _ in range(3)]
        await asyncio.sleep(0)
        worker.stop()
        assert len(done) == 3 and not worker._thread.is_alive()
        await asyncio.sleep(0.01)  # the results were handed back to the loop
        assert all(f.done() for f in futures)

    asyncio.run(main())


# --- inline inference: on the event loop thread when the server is idle -------------------------

def _recording_run(delay: dict | None = None):
    """A fake model: logits = the sum of the input per row; records the thread of every call."""
    threads = []

    def run(batch):
        threads.append(threading.current_thread().name)
        if delay and delay.get("s"):
            time.sleep(delay["s"])
        return batch.reshape(len(batch), -1).sum(axis=1, keepdims=True)

    return run, threads


def test_inline_when_idle_and_the_thread_otherwise():
    run, threads = _recording_run()
    busy = {"other requests": 0, "decoding": 0}
    one = np.ones((1, 3, 2, 2), np.float32)

    async def main():
        queue = InferenceQueue(run, name="t", inline_max_ms=50, image_shape=(3, 2, 2),
                               alone=lambda: busy["other requests"] == 0, expecting=lambda: busy["decoding"])
        await queue.start()
        try:
            first = await queue.submit(one)          # no call timed yet: the thread
            second = await queue.submit(one * 2)     # idle, one image, fast: inline
            assert threads == ["ort-t", "MainThread"] and queue.inline_calls == 1
            assert first.logits.tolist() == [[12.0]] and second.logits.tolist() == [[24.0]]
            assert second.batch_size == 1 and second.inference_ms >= 0 and 0 <= second.queue_ms < 50
            together = await asyncio.gather(*(queue.submit(one * i) for i in range(4)))  # arrive together
            assert [r.logits.tolist() for r in together] == [[[12.0 * i]] for i in range(4)]
            assert threads[2:] == ["ort-t"] * 4 and queue.inline_calls == 1
            await queue.submit(np.ones((2, 3, 2, 2), np.float32))  # two images
            await queue.submit(np.ones((1, 3, 4, 4), np.float32))  # another shape (an OIP tensor)
            busy["other requests"] = 1
            await queue.submit(one)
            busy["other requests"], busy["decoding"] = 0, 1
            await queue.submit(one)
            busy["decoding"] = 0
            assert threads[6:] == ["ort-t"] * 4 and queue.inline_calls == 1
            await queue.submit(one)
            assert threads[-1] == "MainThread" and queue.inline_calls == 2
        finally:
            await queue.stop()

    asyncio.run(main())


def test_inline_is_off_at_zero_and_with_micro_batching_still_batches():
    run, threads = _recording_run()

    async def main():
        off = InferenceQueue(run, name="off", inline_max_ms=0, image_shape=(3, 2, 2), expecting=lambda: 0)
        batching = InferenceQueue(run, name="mb", inline_max_ms=50, image_shape=(3, 2, 2), max_batch=8,
                                  max_wait_ms=200, expecting=lambda: 0)
        for q in (off, batching):
            await q.start()
        try:
            for _ in range(3):
                await off.submit(np.ones((1, 3, 2, 2), np.float32))
            assert threads == ["ort-off"] * 3 and off.inline_calls == 0
            await batching.submit(np.ones((1, 3, 2, 2), np.float32))
            alone = await batching.submit(np.ones((1, 3, 2, 2), np.float32))
            assert threads[-1] == "MainThread" and alone.batch_size == 1
            together = await asyncio.gather(*(batching.submit(np.ones((1, 3, 2, 2), np.float32)) for _ in range(5)))
            assert max(r.batch_size for r in together) >= 4 and batching.inline_calls == 1
        finally:
            for q in (off, batching):
                await q.stop()

    asyncio.run(main())


def test_a_slow_call_sends_the_next_calls_to_the_thread():
    """The rule looks at the slowest of the last INLINE_WINDOW one-image calls: one slow call keeps
    the loop free for that many calls, then fast calls run inline again."""
    from serve.batching import INLINE_WINDOW

    delay = {"s": 0.0}
    run, threads = _recording_run(delay)

    async def main():
        queue = InferenceQueue(run, name="t", inline_max_ms=20, image_shape=(3, 2, 2), expecting=lambda: 0)
        await queue.start()
        try:
            x = np.ones((1, 3, 2, 2), np.float32)
            await queue.submit(x)
            await queue.submit(x)
            assert threads == ["ort-t", "MainThread"]
            delay["s"] = 0.05
            await queue.submit(x)  # judged by the fast calls before it: inline, and slow
            delay["s"] = 0.0
            for _ in range(INLINE_WINDOW):
                await queue.submit(x)
            assert threads[2:] == ["MainThread"] + ["ort-t"] * INLINE_WINDOW
            await queue.submit(x)  # the slow call has left the window
            assert threads[-1] == "MainThread"
            queue.forget_timings()
            await queue.submit(x)
            assert threads[-1] == "ort-t"
        finally:
            await queue.stop()

    asyncio.run(main())


def test_an_inline_call_that_fails_is_inference_failed():
    from serve.batching import InferenceFailed

    fail = {"on": False}

    def run(batch):
        if fail["on"]:
            raise RuntimeError("first line\nORT said no")
        return batch.reshape(1, -1)

    async def main():
        queue = InferenceQueue(run, name="t", inline_max_ms=50, image_shape=(3, 2, 2), expecting=lambda: 0)
        await queue.start()
        try:
            await queue.submit(np.ones((1, 3, 2, 2), np.float32))
            fail["on"] = True
            with pytest.raises(InferenceFailed, match="ORT said no"):
                await queue.submit(np.ones((1, 3, 2, 2), np.float32))
            assert queue.inline_calls == 0 and queue.depth == 0
        finally:
            await queue.stop()

    asyncio.run(main())


def _inference_calls(metrics: str, thread: str) -> float:
    m = re.search(rf'serve_inference_calls_total{{model="digits",thread="{thread}"}} ([0-9.e+]+)', metrics)
    return float(m.group(1)) if m else 0.0


async def _ready(c):
    for _ in range(500):
        if (await c.get("/readyz")).status_code == 200:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("not ready")


def test_predict_inline_alone_on_the_thread_together_with_the_same_answers(digits_onnx, digit_png):  # noqa: F811
    import httpx

    async def run(inline_max_ms: float):
        app = create_app(Settings(models=(ModelSpec("digits", digits_onnx),), inline_max_ms=inline_max_ms))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                await _ready(c)
                post = lambda: c.post("/predict?k=10", content=digit_png, headers={"content-type": "image/png"})  # noqa: E731
                alone = [await post() for _ in range(5)]
                after_alone = (await c.get("/metrics")).text
                together = await asyncio.gather(*(post() for _ in range(8)))
                after_together = (await c.get("/metrics")).text
        counts = [(_inference_calls(t, "inline"), _inference_calls(t, "inference")) for t in (after_alone, after_together)]
        return alone, together, counts

    alone, together, counts = asyncio.run(run(100.0))  # well above a call's time even on a loaded machine
    (inline1, thread1), (inline2, thread2) = counts
    assert inline1 >= 4 and inline2 == inline1, counts  # the first may still follow the warm-up's thread calls
    assert thread2 - thread1 == 8, counts               # all eight concurrent requests went to the thread
    assert max(r.json()["timing_ms"]["queue"] for r in alone[1:]) < 50
    answers = {json.dumps(r.json()["predictions"]) for r in alone + together}
    assert len(answers) == 1  # the same session, the same input: the same scores on either thread
    off_alone, off_together, off_counts = asyncio.run(run(0.0))
    assert off_counts[1][0] == 0
    assert {json.dumps(r.json()["predictions"]) for r in off_alone + off_together} == answers


def test_timeout_after_an_inline_call_is_still_504(digits_onnx, digit_png, monkeypatch):  # noqa: F811
    """An inline call cannot be interrupted: one that ends past the deadline is answered 504 (late),
    and its time sends the next requests to the thread, where the timeout answers on time."""
    from fastapi.testclient import TestClient

    from serve.engine import Model

    original = Model.run
    slow = {"s": 0.0}

    def maybe_slow(self, batch):
        time.sleep(slow["s"])
        return original(self, batch)

    monkeypatch.setattr(Model, "run", maybe_slow)
    app = create_app(Settings(models=(ModelSpec("digits", digits_onnx),), timeout_s=0.2, inline_max_ms=100))
    with TestClient(app, raise_server_exceptions=False) as c:
        wait_ready(c)
        queue = app.state.service.queues["digits"]
        assert c.post("/predict", content=digit_png).status_code == 200
        inline = queue.inline_calls
        assert inline == 1
        slow["s"] = 0.4
        r = c.post("/predict", content=digit_png)
        assert r.status_code == 504 and "timeout" in r.json()["error"]
        assert queue.inline_calls == inline + 1
        t0 = time.perf_counter()
        r = c.post("/predict", content=digit_png)  # the 0.4 s call is in the window: the thread
        assert r.status_code == 504 and time.perf_counter() - t0 < 0.35
        assert queue.inline_calls == inline + 1
        slow["s"] = 0.0
        time.sleep(0.5)
        assert c.post("/predict", content=digit_png).status_code == 200


def test_a_slow_model_never_runs_on_the_loop(digits_onnx, digit_png, monkeypatch):  # noqa: F811
    """A model slower than inline_max_ms (here from its warm-up on) always runs on its thread: the
    loop keeps answering health checks while it works."""
    import httpx

    from serve.engine import Model

    original = Model.run

    def slow(self, batch):
        time.sleep(0.3)
        return original(self, batch)

    monkeypatch.setattr(Model, "run", slow)

    async def main():
        app = create_app(Settings(models=(ModelSpec("digits", digits_onnx),), inline_max_ms=100))
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
                await _ready(c)
                task = asyncio.create_task(c.post("/predict", content=digit_png,
                                                  headers={"content-type": "image/png"}))
                t0 = time.perf_counter()
                await asyncio.sleep(0.05)
                assert (await c.get("/healthz")).status_code == 200
                health_s = time.perf_counter() - t0
                response = await task
                return health_s, response, app.state.service.queues["digits"].inline_calls

    health_s, response, inline_calls = asyncio.run(main())
    assert response.status_code == 200 and inline_calls == 0
    assert health_s < 0.2, health_s  # not held behind the 0.3 s inference


def test_the_warm_ups_first_call_does_not_count_and_the_depth_gauge_moves(digits_onnx, digit_png,  # noqa: F811
                                                                         monkeypatch):
    """A slow first call (ONNX Runtime allocating) does not keep the first requests off the loop;
    serve_queue_depth shows requests waiting for a busy model and drops back to 0."""
    import httpx

    from serve.engine import Model

    original = Model.run
    calls = {"n": 0, "slow": 0.0}

    def run(self, batch):
        calls["n"] += 1
        time.sleep(0.3 if calls["n"] == 1 else calls["slow"])
        return original(self, batch)

    monkeypatch.setattr(Model, "run", run)

    def depth(text: str) -> float:
        return float(re.search(r'^serve_queue_depth{model="digits"} ([0-9.e+]+)$', text, re.M).group(1))

    async def main():
        app = create_app(Settings(models=(ModelSpec("digits", digits_onnx),), inline_max_ms=100))
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
                await _ready(c)
                post = lambda: c.post("/predict", content=digit_png, headers={"content-type": "image/png"})  # noqa: E731
                assert (await post()).status_code == 200
                inline = app.state.service.queues["digits"].inline_calls
                calls["slow"] = 0.2
                tasks = [asyncio.create_task(post()) for _ in range(3)]
                await asyncio.sleep(0.1)
                busy = depth((await c.get("/metrics")).text)
                await asyncio.gather(*tasks)
                idle = depth((await c.get("/metrics")).text)
        return inline, busy, idle

    inline, busy, idle = asyncio.run(main())
    assert inline == 1
    assert busy >= 2 and idle == 0, (busy, idle)


def test_a_mid_sized_image_is_decoded_on_the_loop_only_when_alone(digits_onnx, monkeypatch):  # noqa: F811
    """Images above INLINE_PIXELS go to the decode pool, except up to IDLE_INLINE_PIXELS when the
    request is the only one (the hop would only add latency)."""
    import httpx

    import serve.service as service_module
    from tests.test_serve import encode

    threads = []
    original = service_module.decode_and_transform

    def recording(transform, image):
        threads.append(threading.current_thread().name)
        return original(transform, image)

    monkeypatch.setattr(service_module, "decode_and_transform", recording)
    rng = np.random.default_rng(0)
    mid = encode(Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)), "JPEG")
    big = encode(Image.fromarray(rng.integers(0, 256, (500, 700, 3), dtype=np.uint8)), "JPEG")
    assert service_module.INLINE_PIXELS < 320 * 240 <= service_module.IDLE_INLINE_PIXELS < 700 * 500

    async def main():
        app = create_app(Settings(models=(ModelSpec("digits", digits_onnx),)))
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
                await _ready(c)
                post = lambda body: c.post("/predict", content=body, headers={"content-type": "image/jpeg"})  # noqa: E731
                answers = [await post(mid), await post(big)]
                answers += await asyncio.gather(*(post(mid) for _ in range(3)))
        return answers

    answers = asyncio.run(main())
    assert all(r.status_code == 200 for r in answers)
    assert threads[0] == "MainThread" and threads[1].startswith("decode")
    assert all(name.startswith("decode") for name in threads[2:]), threads
    assert len({json.dumps(r.json()["predictions"]) for r in (answers[0], *answers[2:])}) == 1


# --- post-processing ----------------------------------------------------------------------------

@pytest.mark.parametrize("classes", [2, 10, 32, 33, 1000])
@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_top_predictions_are_softmax_and_sigmoid_best_first(classes, task):
    """Against the plain numpy reference: the same labels in the same order (ties: lower index
    first), scores to the last bit above SMALL_K classes and within 1e-14 below."""
    from pathlib import Path

    from serve.engine import SMALL_K, ModelInfo, sigmoid, softmax, top_predictions

    info = ModelInfo(name="m", path=Path("m.onnx"), task=task, labels=[f"c{i}" for i in range(classes)],
                     input_size=[3, 8, 8], mean=[0.0] * 3, std=[1.0] * 3, interpolation="bilinear", threshold=0.5)
    rng = np.random.default_rng(classes)
    for trial in range(100):
        logits = (rng.normal(size=classes) * rng.uniform(0.1, 8)).astype(np.float32)
        logits[rng.integers(0, classes, 3)] = logits[0]  # ties
        for k in (None, 1, 3, classes + 5):
            for threshold in (None, 0.2):
                got = top_predictions(info, logits, k, threshold)
                scores = sigmoid(logits) if task == "multilabel" else softmax(logits)
                order = [int(i) for i in np.argsort(-scores, kind="stable")]
                if task == "multilabel":
                    order = [i for i in order if scores[i] >= (threshold or info.threshold)]
                order = order[:k] if k is not None else order if task == "multilabel" else order
                assert [p["index"] for p in got] == order, (trial, k, threshold)
                assert [p["label"] for p in got] == [f"c{i}" for i in order]
                for p in got:
                    assert type(p["score"]) is float and type(p["index"]) is int
                    if classes > SMALL_K:
                        assert p["score"] == float(scores[p["index"]])
                    else:
                        assert p["score"] == pytest.approx(float(scores[p["index"]]), rel=1e-14, abs=1e-300)
