"""Prometheus metrics of one process: requests and latency per route, model and version; batch sizes,
queue depth, loaded models and their memory."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from modelport.serving.runtime import ModelRuntime

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class _RuntimeCollector(Collector):
    def __init__(self, runtime: ModelRuntime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterable[Metric]:
        infos = self.runtime.loaded()
        count = GaugeMetricFamily("modelport_loaded_models", "Model versions loaded in this process")
        count.add_metric([], len(infos))
        memory = GaugeMetricFamily(
            "modelport_loaded_model_bytes", "Estimated memory of a loaded version", labels=["model", "version"]
        )
        for info in infos:
            memory.add_metric([info.model, str(info.version)], info.memory_bytes)
        budget = GaugeMetricFamily("modelport_memory_budget_bytes", "Memory budget for loaded models")
        budget.add_metric([], self.runtime.memory_budget)
        depth = GaugeMetricFamily(
            "modelport_queue_depth", "Examples waiting for a version's batcher", labels=["model", "version"]
        )
        for model, version, batcher in self.runtime.batchers():
            depth.add_metric([model, str(version)], batcher.queue_depth)
        yield from (count, memory, budget, depth)


class Metrics:
    def __init__(self) -> None:
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._prediction_children: dict[tuple[str, int | None, bool], tuple[Any, Any]] = {}
        self._batch_children: dict[tuple[str, int], Any] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "modelport_http_requests_total", "HTTP requests", ["route", "method", "status"], registry=self.registry
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
            "Prediction latency (resolve, preprocess, queue, model, decode)",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "modelport_batch_size",
            "Examples per model call (after dynamic batching)",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )

        self.shadow = Counter(
            "modelport_shadow_total",
            "Shadow predictions compared with the answer returned",
            ["model", "version", "outcome"],
            registry=self.registry,
        )
        self.shadow_diff = Histogram(
            "modelport_shadow_max_abs_difference",
            "Largest |primary - shadow| of a mirrored request",
            ["model", "version"],
            buckets=(1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 0.5, 1.0),
            registry=self.registry,
        )

    def observe_shadow(self, model: str, version: int, outcome: str, diff: float) -> None:
        self.shadow.labels(model, str(version), outcome).inc()
        if diff == diff and diff != float("inf"):  # not NaN, not inf
            self.shadow_diff.labels(model, str(version)).observe(diff)

    def forget_children(self) -> None:
        self._request_children.clear()
        self._prediction_children.clear()
        self._batch_children.clear()

    def watch_runtime(self, runtime: ModelRuntime) -> None:
        self.registry.register(_RuntimeCollector(runtime))

    # prometheus_client's labels() costs ~3 us a call (validation, tuple building, a lock): on a hot path
    # that answers in ~100 us that is measurable, so the labelled children are looked up once and kept.
    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = (self.requests.labels(route, method, str(status)), self.latency.labels(route, method))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_prediction(self, model: str, version: int | None, seconds: float, *, ok: bool) -> None:
        key = (model, version, ok)
        children = self._prediction_children.get(key)
        if children is None:
            label = "-" if version is None else str(version)
            children = (
                self.predictions.labels(model, label, "ok" if ok else "error"),
                self.prediction_latency.labels(model, label),
            )
            if len(self._prediction_children) > 100_000:
                self._prediction_children.clear()
            self._prediction_children[key] = children
        children[0].inc()
        if ok:
            children[1].observe(seconds)

    def observe_batch(self, model: str, version: int, rows: int) -> None:
        key = (model, version)
        child = self._batch_children.get(key)
        if child is None:
            child = self._batch_children[key] = self.batch_size.labels(model, str(version))
        child.observe(rows)

    def render(self) -> bytes:
        return generate_latest(self.registry)
