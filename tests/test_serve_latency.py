"""The per-request latency work on the service, and that it changed no answer:

- ``FastPredictRoute`` answers plain ``POST /predict`` requests without FastAPI's dependency
  solving; every request here gets the same status, body (bar the timings) and headers with and
  without it, it takes exactly the requests it claims, and the OpenAPI schema is unchanged;
- no dependency of the routes is a plain function (FastAPI would run it in a worker thread: a
  thread hop per request);
- ``InferenceThread``: results, stamps, errors, cancelled requests still counted until their call
  ends, shutdown after the calls already submitted.
"""
from __future__ import annotations

import asyncio
import inspect
import threading
import time

import numpy as np
import pytest

from serve import ModelSpec, Settings, create_app
from serve.batching import InferenceQueue, InferenceThread
from serve.routers.predict import FastPredictRoute
from tests.test_serve import digit_png, digits_onnx, multilabel_onnx, wait_ready  # noqa: F401

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")]

KEY = "s3cret-key-123"


def _apps(digits, ml, **settings):
    """The service as built (fast route first) and the same app without the fast route."""
    specs = (ModelSpec("digits", digits), ModelSpec("ml", ml))
    fast = create_app(Settings(models=specs, max_upload_bytes=64 * 1024, **settings))
    plain = create_app(Settings(models=specs, max_upload_bytes=64 * 1024, **settings))
    plain.router.routes[:] = [r for r in plain.router.routes if not isinstance(r, FastPredictRoute)]
    assert isinstance(fast.router.routes[0], FastPredictRoute)
    assert not any(isinstance(r, FastPredictRoute) for r in plain.router.routes)
    return fast, plain


def _counting(app) -> dict:
    """Count the requests the fast route handles."""
    route = app.router.routes[0]
    seen = {"n": 0}
    inner = route.app

    async def counted(scope, receive, send):
        seen["n"] += 1
        await inner(scope, receive, send)

    route.app = counted
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
    bodies = {"raw png": dict(content=digit_png, headers={"content-type": "image/png"}),
              "octet-stream": dict(content=digit_png, headers={"content-type": "application/octet-stream"}),
              "multipart": dict(files={"file": ("d.png", digit_png, "image/png")}),
              "junk": dict(content=b"junk", headers={"content-type": "image/png"}),
              "json": dict(json={"image": "x"}),
              "too big": dict(content=b"\x89PNG" + b"0" * 70_000, headers={"content-type": "image/png"})}
    with TestClient(fast, raise_server_exceptions=False) as a, TestClient(plain, raise_server_exceptions=False) as b:
        wait_ready(a)
        wait_ready(b)
        for query, taken in QUERIES:
            for name, kwargs in bodies.items():
                before = seen["n"]
                ra, rb = a.post(f"/predict?{query}", **kwargs), b.post(f"/predict?{query}", **kwargs)
                assert _comparable(ra) == _comparable(rb), (query, name, ra.text, rb.text)
                expect = taken and name != "too big"  # the body limit answers before any route
                assert seen["n"] - before == int(expect), (query, name)
        assert a.post("/predict?k=3", content=digit_png).json()["predictions"][0]["label"] == \
            b.post("/predict?k=3", content=digit_png).json()["predictions"][0]["label"]
        for method in ("get", "put", "delete"):  # other methods: the FastAPI route's 405
            before = seen["n"]
            assert _comparable(getattr(a, method)("/predict")) == _comparable(getattr(b, method)("/predict"))
            assert seen["n"] == before
        assert a.get("/openapi.json").json() == b.get("/openapi.json").json()
        metrics = a.get("/metrics").text
        assert 'serve_requests_total{method="POST",route="/predict",status="200"}' in metrics


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
    route = fast.router.routes[0]
    scope = {"type": "http", "method": "POST", "path": "/predict", "root_path": "", "query_string": b"",
             "headers": [(b"authorization", f"Bearer {KEY}".encode())] * 2}
    assert route.matches(scope)[0].name == "NONE"
    scope["headers"] = scope["headers"][:1]
    assert route.matches(scope)[0].name == "FULL"


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
