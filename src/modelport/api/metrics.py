"""Prometheus metrics of one process: requests and latency per route, model and version; batch sizes,
queue depth, loaded models and their memory."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from modelport.serving.runtime import ModelRuntime

LATENCY_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
MAX_SERIES = 100_000
"""Past this many label sets a table starts over rather than grow (model names come from requests)."""
_STATUS = {code: str(code) for code in range(100, 600)}


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


class _Histograms:
    """Counts and sums per label set, kept in plain lists: observing costs a bisect and two additions
    (prometheus_client's child ``observe`` takes a lock and walks every bucket, ~2 us). Read at scrape."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.les = [repr(float(b)) for b in bounds] + ["+Inf"]
        self.series: dict[tuple[str, ...], list[float]] = {}
        """label values -> [count in bucket 0, ..., count above the last bound, sum]."""

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        row = self.series.get(labels)
        if row is None:
            if len(self.series) > MAX_SERIES:
                self.series.clear()
            row = self.series[labels] = [0.0] * (len(self.bounds) + 2)
        row[bisect_left(self.bounds, value)] += 1
        row[-1] += value

    def family(self, name: str, documentation: str, label_names: list[str]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, documentation, labels=label_names)
        for labels, row in list(self.series.items()):
            running, buckets = 0.0, []
            for le, count in zip(self.les, row[:-1], strict=True):
                running += count
                buckets.append((le, running))
            family.add_metric(list(labels), buckets, sum_value=row[-1])
        return family


class _Counts:
    def __init__(self) -> None:
        self.series: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...]) -> None:
        series = self.series
        if labels not in series and len(series) > MAX_SERIES:
            series.clear()
        series[labels] = series.get(labels, 0.0) + 1

    def family(self, name: str, documentation: str, label_names: list[str]) -> CounterMetricFamily:
        family = CounterMetricFamily(name, documentation, labels=label_names)
        for labels, value in list(self.series.items()):
            family.add_metric(list(labels), value)
        return family


class _HotCollector(Collector):
    """The per-request metrics (requests, latencies, predictions, batch sizes), rendered at scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        m = self.metrics
        yield m.requests.family("modelport_http_requests_total", "HTTP requests", ["route", "method", "status"])
        yield m.latency.family("modelport_http_request_duration_seconds", "HTTP request latency", ["route", "method"])
        yield m.predictions.family(
            "modelport_predictions_total", "Predictions answered", ["model", "version", "outcome"]
        )
        yield m.prediction_latency.family(
            "modelport_prediction_duration_seconds",
            "Prediction latency (resolve, preprocess, queue, model)",
            ["model", "version"],
        )
        yield m.batch_size.family(
            "modelport_batch_size", "Examples per model call (after dynamic batching)", ["model", "version"]
        )
        lane = CounterMetricFamily(
            "modelport_http_lane_requests", "Inference requests answered by the protocol lane (api/lane.py)"
        )
        lane.add_metric([], m.lane_requests)
        yield lane


class Metrics:
    def __init__(self) -> None:
        self.requests = _Counts()
        self.latency = _Histograms(LATENCY_BUCKETS)
        self.predictions = _Counts()
        self.prediction_latency = _Histograms(LATENCY_BUCKETS)
        self.batch_size = _Histograms(BATCH_BUCKETS)
        self.lane_requests = 0
        self._labels: dict[tuple[str, int | None], str] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_HotCollector(self))
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

    def watch_runtime(self, runtime: ModelRuntime) -> None:
        self.registry.register(_RuntimeCollector(runtime))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.inc((route, method, _STATUS.get(status) or str(status)))
        self.latency.observe((route, method), seconds)

    def observe_prediction(self, model: str, version: int, seconds: float, ok: bool) -> None:
        """A request that reached ``version`` (``InferenceService.on_prediction``): answered, or failed."""
        label = str(version)
        self.predictions.inc((model, label, "ok" if ok else "error"))
        if ok:
            self.prediction_latency.observe((model, label), seconds)

    def observe_batch(self, model: str, version: int, rows: int) -> None:
        self.batch_size.observe((model, str(version)), rows)

    def render(self) -> bytes:
        return generate_latest(self.registry)
