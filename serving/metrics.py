"""Prometheus metrics of one API process (own CollectorRegistry, so several apps can live in one test process).

    poseloop_http_requests_total{route, method, status, model_version}
    poseloop_http_request_duration_seconds{route, model_version}      histogram
    poseloop_batch_crops / poseloop_batch_requests                     histograms (per backend call)
    poseloop_batch_inference_seconds{model_version}                    histogram
    poseloop_backend_errors_total{model_version}
    poseloop_promotions_total{action, outcome}
    poseloop_hot_swap_seconds                                          histogram (whole promote call)
    poseloop_active_model{version}                                     1 for the serving version

`route` is the route template ("/v1/pose"), never the raw path, so label cardinality stays bounded; requests
that match no route are counted under "unmatched". `model_version` is "none" when no model was involved.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "poseloop_http_requests", "HTTP requests", ["route", "method", "status", "model_version"], registry=r
        )
        self.latency = Histogram(
            "poseloop_http_request_duration_seconds",
            "HTTP request latency",
            ["route", "model_version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_crops = Histogram(
            "poseloop_batch_crops", "person crops per backend batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            "poseloop_batch_requests", "requests per backend batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "poseloop_batch_inference_seconds",
            "backend time per batch",
            ["model_version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.backend_errors = Counter("poseloop_backend_errors", "failed backend calls", ["model_version"], registry=r)
        self.promotions = Counter("poseloop_promotions", "promotions and rollbacks", ["action", "outcome"], registry=r)
        self.hot_swap = Histogram(
            "poseloop_hot_swap_seconds",
            "promote/rollback call duration (load + flip)",
            buckets=(0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
            registry=r,
        )
        self.active_model = Gauge(
            "poseloop_active_model", "1 for the version this process serves", ["version"], registry=r
        )
        self._active: str | None = None

    def observe_request(self, route: str, method: str, status: int, version: str | None, seconds: float) -> None:
        version = version or "none"
        self.requests.labels(route, method, str(status), version).inc()
        self.latency.labels(route, version).observe(seconds)

    def observe_batch(self, version: str, requests: int, crops: int, seconds: float) -> None:
        self.batch_requests.observe(requests)
        self.batch_crops.observe(crops)
        self.batch_seconds.labels(version).observe(seconds)

    def observe_backend_error(self, version: str, _err: BaseException) -> None:
        self.backend_errors.labels(version).inc()

    def set_active(self, version: str | None) -> None:
        if version == self._active:
            return
        if self._active is not None:
            self.active_model.labels(self._active).set(0)
        if version is not None:
            self.active_model.labels(version).set(1)
        self._active = version

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware: counts every HTTP request with its route template, status and X-Model-Version."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: int = 500
        version: str | None = None

        async def send_wrapper(message) -> None:
            nonlocal status, version
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", []):
                    if name.lower() == b"x-model-version":
                        version = value.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(
                template, scope.get("method", ""), status, version, time.perf_counter() - start
            )
