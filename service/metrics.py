"""Prometheus metrics of the service, on a registry that belongs to one app.

With several worker processes (granian or gunicorn), prometheus-client's multiprocess mode is used: `python -m service`
sets PROMETHEUS_MULTIPROC_DIR before anything imports prometheus_client, every worker writes its values
to files there, and /metrics merges them. Labels are bounded: model and version come from the repository
(never from a request that named an unknown model), outcome and route from fixed sets.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from service.statistics import Statistics

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Seconds; a small model answers in well under a millisecond, a busy server in tens of milliseconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
OUTCOMES = ("success", "client_error", "server_error")


class Metrics:
    """The service's collectors. `multiprocess_dir` is set when several worker processes share them."""

    def __init__(self, multiprocess_dir: str | None = None, state_dir: str | None = None):
        self.registry = CollectorRegistry()
        self.multiprocess_dir = multiprocess_dir
        self.statistics = Statistics(state_dir)  # the statistics extension's counters, summed over workers
        r = self.registry
        self.requests = Counter(
            "nnserve_inference_requests", "Inference requests by model, version and outcome "
            "(success, client_error, server_error).", ["model", "version", "outcome"], registry=r)
        self.request_duration = Histogram(
            "nnserve_inference_request_duration_seconds", "Time to answer an inference request, "
            "from the body read to the response built.", ["model", "version"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_duration = Histogram(
            "nnserve_inference_queue_duration_seconds", "Time from the request's arrival to the start of its "
            "model execution (decoding, checks, waiting).", ["model", "version"], buckets=LATENCY_BUCKETS, registry=r)
        self.compute_duration = Histogram(
            "nnserve_inference_compute_duration_seconds", "Time ONNX Runtime spent executing the model.",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "nnserve_inference_batch_size", "Samples per model execution.", ["model", "version"],
            buckets=BATCH_BUCKETS, registry=r)
        self.in_flight = Gauge(
            "nnserve_inference_requests_in_flight", "Inference requests being processed.", registry=r,
            multiprocess_mode="livesum")
        self.model_loaded = Gauge(
            "nnserve_model_loaded", "1 for each model version loaded and serving, with its ONNX Runtime "
            "provider.", ["model", "version", "provider"], registry=r, multiprocess_mode="livemax")
        self.load_failures = Counter(
            "nnserve_model_load_failures", "Model versions that failed to load, by model.", ["model"], registry=r)
        self._bound: dict[tuple[str, str], ModelMetrics] = {}
        self.http_requests = Counter(
            "nnserve_http_requests", "HTTP requests by route template, method and status code.",
            ["route", "method", "status"], registry=r)
        self.grpc_requests = Counter(
            "nnserve_grpc_requests", "gRPC calls by method and status code (a stream counts each of its requests).",
            ["method", "code"], registry=r)
        self.sequences = SequenceCollector()  # stateful models' sequences, read from their shared tables
        r.register(self.sequences)

    def for_model(self, model: str, version: str) -> "ModelMetrics":
        """The collectors of one model version with their labels bound once (labels() costs on every call)."""
        bound = self._bound.get((model, version))
        if bound is None:
            bound = self._bound[(model, version)] = ModelMetrics(self, model, version)
        return bound

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        if self.multiprocess_dir:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.multiprocess_dir)
            registry.register(self.sequences)  # the tables are shared by the workers: any worker's view is whole
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class ModelMetrics:
    """One model version's children of the labelled collectors."""

    def __init__(self, metrics: Metrics, model: str, version: str):
        self.outcomes = {outcome: metrics.requests.labels(model, version, outcome) for outcome in OUTCOMES}
        self.request_duration = metrics.request_duration.labels(model, version)
        self.queue_duration = metrics.queue_duration.labels(model, version)
        self.compute_duration = metrics.compute_duration.labels(model, version)
        self.batch_size = metrics.batch_size.labels(model, version)
        self.stats = metrics.statistics.for_model(model, version)

    def observe_run(self, samples: int, seconds: float) -> None:
        """One ONNX Runtime execution: its batch size and duration."""
        self.batch_size.observe(samples)
        self.compute_duration.observe(seconds)

    def observe_batch(self, samples: int, seconds: float) -> None:
        """One run of the dynamic batcher: observe_run, and the statistics extension's execution counts (a request
        that runs alone counts its execution with its success)."""
        self.observe_run(samples, seconds)
        self.stats.execution(samples)


class SequenceCollector:
    """The sequences of the stateful model versions this worker serves, from their tables (service/sequences.py),
    which every worker shares: live now, and started, ended and expired since the server started."""

    def __init__(self):
        self.tables: dict[tuple[str, str], object] = {}  # (model, version) -> SequenceTable, kept by the registry

    def collect(self):
        labels = ["model", "version"]
        live = GaugeMetricFamily("nnserve_sequences_live", "Live sequences of a stateful model version.", labels=labels)
        families = {key: CounterMetricFamily(f"nnserve_sequences_{key}", text, labels=labels) for key, text in (
            ("started", "Sequences started (a START request), by model version."),
            ("ended", "Sequences ended by an END request, by model version."),
            ("expired", "Sequences dropped after max_sequence_idle_microseconds without a request."))}
        for (model, version), table in list(self.tables.items()):
            table.reap()
            counts = table.counts()
            live.add_metric([model, version], counts["live"])
            for key, family in families.items():
                family.add_metric([model, version], counts[key])
        return [live, *families.values()]
