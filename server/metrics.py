"""Prometheus metrics: requests by model, version and status; latency, queue time and
batch size histograms; requests in flight. Each server owns its registry, so that
several servers (tests) can live in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Seconds: 50 µs (an idle MLP) to 2.5 s (a deep queue).
LATENCY_BUCKETS = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 0.5, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("model", "version")
        self.requests = Counter(
            "zoo_inference_requests",
            "Inference requests by model, version and gRPC status",
            (*labels, "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "zoo_inference_latency_seconds",
            "Server-side request latency, decode to encode",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue = Histogram(
            "zoo_queue_seconds",
            "Time a request waited for its batch to start",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "zoo_batch_size",
            "Images per session call",
            labels,
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "zoo_inference_in_flight", "Requests being served", labels, registry=self.registry
        )

    def for_model(self, name: str, version: str) -> ModelMetrics:
        return ModelMetrics(self, name, version)

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics over HTTP on a daemon thread; returns the bound port."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return server.server_port


class ModelMetrics:
    """One model version's label children, bound once: no label lookups per request."""

    def __init__(self, metrics: ServerMetrics, name: str, version: str) -> None:
        self._metrics = metrics
        self._labels = (name, version)
        self.ok = metrics.requests.labels(name, version, "OK")
        self.latency = metrics.latency.labels(name, version)
        self.queue = metrics.queue.labels(name, version)
        self.batch_size = metrics.batch_size.labels(name, version)
        self.in_flight = metrics.in_flight.labels(name, version)

    def failed(self, status: str) -> None:
        self._metrics.requests.labels(*self._labels, status).inc()
