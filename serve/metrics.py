"""Prometheus metrics with ``prometheus-client``: one registry per app (so several apps can live in
one process, as in the tests), or the multiprocess collector when ``PROMETHEUS_MULTIPROC_DIR`` is
set (``--workers N`` sets it, so ``/metrics`` on any worker reports the sum over all workers).

    serve_requests_total{route, method, status}       requests answered
    serve_request_duration_seconds{route}             wall time per request (histogram)
    serve_stage_duration_seconds{model, stage}        decode / preprocess / queue / inference
    serve_batch_size{model}                           images per ONNX Runtime call (histogram)
    serve_inference_calls_total{model, thread}        ONNX Runtime calls on the "inference" thread or
                                                      "inline" on the event loop thread (idle server)
    serve_requests_in_flight                          requests being handled now
    serve_queue_depth{model}                          requests waiting for inference now
    serve_fewshot_enrolments_total{model}             few-shot classes enrolled or replaced
    serve_prototype_predictions_total{model}          images classified by nearest prototype
    process_* / python_*                              RSS, CPU, GC of this process (one worker)
"""
from __future__ import annotations

import os
import time

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest)

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
UNMATCHED = "unmatched"


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = multiprocess_dir() is not None
        # In multiprocess mode values live in files shared by the workers; the registry only
        # holds this process's objects and is never exposed directly.
        self.registry = CollectorRegistry(auto_describe=True)
        if not self.multiprocess:
            from prometheus_client.gc_collector import GCCollector
            from prometheus_client.platform_collector import PlatformCollector
            from prometheus_client.process_collector import ProcessCollector

            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter("serve_requests", "Requests answered, by route template, method and status.",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("serve_request_duration_seconds", "Wall time from request start to response end.",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.stages = Histogram("serve_stage_duration_seconds",
                                "Time per processing stage: decode, preprocess, queue, inference.",
                                ["model", "stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("serve_batch_size", "Images per ONNX Runtime call.", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.inference_calls = Counter("serve_inference_calls", "ONNX Runtime calls, by the thread that ran them: "
                                       "'inference' (the model's inference thread) or 'inline' (the event loop "
                                       "thread, for a lone request on an idle server).", ["model", "thread"],
                                       registry=r)
        self.enrolments = Counter("serve_fewshot_enrolments", "Few-shot classes enrolled or replaced "
                                  "(POST /v1/classes answered 201).", ["model"], registry=r)
        self.prototype_predictions = Counter("serve_prototype_predictions", "Images classified by their "
                                             "nearest few-shot prototype (mode=prototype).", ["model"], registry=r)
        gauge_mode = {"multiprocess_mode": "livesum"} if self.multiprocess else {}
        self.in_flight = Gauge("serve_requests_in_flight", "Requests being handled now.", registry=r, **gauge_mode)
        self.queue_depth = Gauge("serve_queue_depth", "Requests waiting for inference now.", ["model"],
                                 registry=r, **gauge_mode)
        self.active = 0  # HTTP requests being handled now by this process (what the inline rule asks)
        # labelled children by label values: .labels() validates and locks on every call
        self._stage_children: dict[str, dict] = {}
        self._request_children: dict[tuple[str, str, int], tuple] = {}

    def observe_stages(self, model: str, timings_ms: dict[str, float]) -> None:
        children = self._stage_children.setdefault(model, {})
        for stage, ms in timings_ms.items():
            if stage != "total":
                child = children.get(stage)
                if child is None:
                    child = children[stage] = self.stages.labels(model, stage)
                child.observe(ms / 1000.0)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (self.requests.labels(route, method, str(status)),
                                                      self.latency.labels(route))
        children[0].inc()
        children[1].observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI middleware (no per-request task, unlike BaseHTTPMiddleware): counts every HTTP
    request by its route template (``/v2/models/{name}/infer``, not the raw path, so label
    cardinality stays bounded) and status, times it, tracks requests in flight."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        m = self.metrics
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        m.in_flight.inc()
        m.active += 1
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            m.active -= 1
            m.in_flight.dec()
            route = scope.get("route")
            m.observe_request(getattr(route, "path", None) or UNMATCHED, scope.get("method", ""), status["code"],
                              time.perf_counter() - start)
