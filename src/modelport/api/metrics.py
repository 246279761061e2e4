"""Prometheus metrics of one process: requests and latency per route and per model, loaded models."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelport.serving.runtime import LoadedInfo

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)


class _LoadedCollector(Collector):
    def __init__(self, loaded: Callable[[], list[LoadedInfo]]) -> None:
        self.loaded = loaded

    def collect(self) -> Iterable[Metric]:
        infos = self.loaded()
        count = GaugeMetricFamily("modelport_loaded_models", "Model versions loaded in this process")
        count.add_metric([], len(infos))
        memory = GaugeMetricFamily(
            "modelport_loaded_model_bytes",
            "Estimated memory of a loaded version",
            labels=["model", "version"],
        )
        for info in infos:
            memory.add_metric([info.model, str(info.version)], info.memory_bytes)
        yield count
        yield memory


class Metrics:
    def __init__(self, loaded: Callable[[], list[LoadedInfo]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "modelport_http_requests_total",
            "HTTP requests",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "modelport_http_request_duration_seconds",
            "HTTP request latency",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "modelport_predictions_total",
            "Predictions answered",
            ["model", "version", "outcome"],
            registry=self.registry,
        )
        self.prediction_latency = Histogram(
            "modelport_prediction_duration_seconds",
            "Prediction latency (resolve, preprocess, model, decode)",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_LoadedCollector(loaded))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def observe_prediction(self, model: str, version: int, seconds: float, *, ok: bool) -> None:
        self.predictions.labels(model, str(version), "ok" if ok else "error").inc()
        if ok:
            self.prediction_latency.labels(model, str(version)).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
