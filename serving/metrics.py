"""Prometheus metrics of one API process (own CollectorRegistry, so several apps can live in one test process).

    poseloop_http_requests_total{route, method, status, model_version}
    poseloop_http_request_duration_seconds{route, model_version}      histogram
    poseloop_batch_crops / poseloop_batch_requests                     histograms (per backend call)
    poseloop_batch_inference_seconds{model_version}                    histogram
    poseloop_backend_errors_total{model_version}
    poseloop_promotions_total{action, outcome}
    poseloop_hot_swap_seconds                                          histogram (whole promote call)
    poseloop_active_model{version}                                     1 for the serving version
    poseloop_keypoint_confidence{model_version}                         histogram of returned keypoint scores
                                                                       (drift: compare versions and weeks)
  read from the loop's stores at scrape time (LoopCollector):
    poseloop_jobs{state}, poseloop_queue_depth, poseloop_outbox_messages
    poseloop_gate_decisions{decision}                                  finished retrains by gate decision
    poseloop_last_gate{figure}                                         gain, ci_low, ci_high, candidate, active
    poseloop_unlabeled_images, poseloop_unlabeled_bytes, poseloop_loop_metrics_up

No `*_created` series (prometheus_client's creation timestamps are noise for these dashboards).

`route` is the route template ("/v1/pose"), never the raw path, so label cardinality stays bounded; requests
that match no route are counted under "unmatched". `model_version` is "none" when no model was involved.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric

disable_created_metrics()
log = logging.getLogger("poseloop.metrics")
CONFIDENCE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
GATE_FIGURES = {
    "gain": "gain",
    "ci_low": "ci_low",
    "ci_high": "ci_high",
    "candidate": "candidate_value",
    "active": "active_value",
}

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
        self.keypoint_confidence = Histogram(
            "poseloop_keypoint_confidence",
            "scores of the keypoints returned (per version: drift shows as a moving distribution)",
            ["model_version"],
            buckets=CONFIDENCE_BUCKETS,
            registry=r,
        )
        self._active: str | None = None

    def watch_loop(self, summary: Callable[[], dict[str, Any]]) -> None:
        """Export the loop's state (LoopCollector) from `summary`, read at every scrape."""
        self.registry.register(LoopCollector(summary))

    def observe_confidence(self, version: str, scores) -> None:
        histogram = self.keypoint_confidence.labels(version)
        for person in scores:
            for value in person:
                histogram.observe(float(value))

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
            template = getattr(scope.get("route"), "path", None) or _plain_route(scope) or "unmatched"
            self.metrics.observe_request(
                template, scope.get("method", ""), status, version, time.perf_counter() - start
            )


def _plain_route(scope) -> str | None:
    """The template of a plain Starlette route (FastAPI's /openapi.json), which sets `endpoint` but no `route`."""
    endpoint, app = scope.get("endpoint"), scope.get("app")
    if endpoint is None or app is None:
        return None
    return next((r.path for r in getattr(app, "routes", ()) if getattr(r, "endpoint", None) is endpoint), None)


class LoopCollector:
    """The loop's state as gauges, read when Prometheus scrapes (no background thread, never stale). `summary`
    returns {"jobs": JobStore.summary(), "pool": {"images", "bytes"}, "outbox": n}; if it fails, the series are
    left out and poseloop_loop_metrics_up is 0 (the scrape itself still answers)."""

    def __init__(self, summary: Callable[[], dict[str, Any]]) -> None:
        self.summary = summary

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("poseloop_loop_metrics_up", "1 when the loop's stores could be read")
        try:
            data = self.summary()
        except Exception:  # a locked or missing store must not break /metrics
            log.exception("loop metrics: the stores could not be read")
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = data["jobs"]
        states = GaugeMetricFamily("poseloop_jobs", "jobs by state", labels=["state"])
        for state, n in sorted(jobs["states"].items()):
            states.add_metric([state], n)
        yield states
        yield GaugeMetricFamily("poseloop_queue_depth", "jobs queued, not yet claimed", value=jobs["states"]["queued"])
        yield GaugeMetricFamily("poseloop_outbox_messages", "messages waiting for the broker", value=data["outbox"])
        decisions = GaugeMetricFamily(
            "poseloop_gate_decisions", "finished retrains by gate decision", labels=["decision"]
        )
        for decision in ("promoted", "rejected", "kept"):
            decisions.add_metric([decision], jobs["gate_decisions"].get(decision, 0))
        yield decisions
        if jobs["last_gate"]:
            last = GaugeMetricFamily("poseloop_last_gate", "the newest gate decision's figures", labels=["figure"])
            for figure, key in GATE_FIGURES.items():
                if isinstance(jobs["last_gate"].get(key), int | float):
                    last.add_metric([figure], jobs["last_gate"][key])
            yield last
        yield GaugeMetricFamily(
            "poseloop_unlabeled_images", "images in the unlabeled pool", value=data["pool"]["images"]
        )
        yield GaugeMetricFamily("poseloop_unlabeled_bytes", "stored bytes of the pool", value=data["pool"]["bytes"])
