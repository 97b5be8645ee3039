"""Prometheus metrics: requests by model, version and status; latency, queue time and
batch size histograms; requests in flight. Each server owns its registry, so that
several servers (tests) can live in one process. Beside ours, Triton's per-model
counters by Triton's names (nv_inference_*), read from ModelStatistics when scraped.

The /metrics endpoint has its own small HTTP server: prometheus_client's starts a
thread for every connection, without a cap or a timeout, inside the inference process."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, MetricsHandler
from prometheus_client.metrics_core import Metric

from proto.grpc_service_pb2 import ModelStatistics, ModelStatisticsResponse

log = logging.getLogger(__name__)

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
            "zoo_inference_in_flight",
            "Requests being served",
            labels,
            registry=self.registry,
            # With several worker processes (prometheus_client's multiprocess mode): the
            # sum over the live ones. Ignored in one process.
            multiprocess_mode="livesum",
        )

    def for_model(self, name: str, version: str) -> ModelMetrics:
        return ModelMetrics(self, name, version)


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


# Triton's counters: (name, help, the value in one model version's ModelStatistics).
# Durations are of successful requests, in microseconds, as Triton counts them.
TRITON_COUNTERS: tuple[tuple[str, str, Callable[[ModelStatistics], float]], ...] = (
    ("nv_inference_request_success", "Requests answered successfully",
     lambda s: s.inference_stats.success.count),
    ("nv_inference_request_failure", "Requests that failed",
     lambda s: s.inference_stats.fail.count),
    ("nv_inference_count", "Inferences made (a request of batch N makes N)",
     lambda s: s.inference_count),
    ("nv_inference_exec_count", "Model executions (session calls; a batch is one)",
     lambda s: s.execution_count),
    ("nv_inference_request_duration_us", "Time successful requests took in the server, us",
     lambda s: s.inference_stats.success.ns / 1e3),
    ("nv_inference_queue_duration_us", "Time successful requests waited in the queue, us",
     lambda s: s.inference_stats.queue.ns / 1e3),
    ("nv_inference_compute_input_duration_us", "Time spent preparing inputs, us",
     lambda s: s.inference_stats.compute_input.ns / 1e3),
    ("nv_inference_compute_infer_duration_us", "Time spent in the model, us",
     lambda s: s.inference_stats.compute_infer.ns / 1e3),
    ("nv_inference_compute_output_duration_us", "Time spent on outputs, us",
     lambda s: s.inference_stats.compute_output.ns / 1e3),
)  # fmt: skip


class TritonCounters:
    """A collector of TRITON_COUNTERS for every model version `statistics()` reports,
    so that dashboards made for Triton read ours. Nothing is counted per request: the
    figures are ModelStatistics' own, read at scrape time. They are exposed untyped,
    because prometheus_client names a counter's samples ..._total and Triton's do not
    end so."""

    def __init__(self, statistics: Callable[[], ModelStatisticsResponse]) -> None:
        self._statistics = statistics

    def collect(self) -> Iterator[Metric]:
        models = self._statistics().model_stats
        for name, documentation, value in TRITON_COUNTERS:
            family = Metric(name, documentation, "unknown")
            for stats in models:
                labels = {"model": stats.name, "version": stats.version}
                family.add_sample(name, labels, value(stats))
            yield family


class MetricsServer(ThreadingHTTPServer):
    """At most MAX_CONNECTIONS scrapes at once (more are closed unanswered), each given
    `timeout` seconds by its handler: half-open connections cannot pile up threads."""

    MAX_CONNECTIONS = 8
    daemon_threads = True

    @classmethod
    def serve(
        cls, registry: CollectorRegistry, host: str, port: int, tls: ssl.SSLContext | None = None
    ) -> MetricsServer:
        """Serve /metrics of `registry` (over TLS with `tls`) on a daemon thread."""
        handler = type("Handler", (MetricsHandler,), {"registry": registry, "timeout": 5.0})
        server = cls((host, port), handler, tls)
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        return server

    def __init__(
        self, address: tuple[str, int], handler: type[MetricsHandler], tls: ssl.SSLContext | None
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._slots = threading.BoundedSemaphore(self.MAX_CONNECTIONS)
        self._tls = tls
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            if self._tls is not None:  # the handshake runs here, not in the accepting loop
                request.settimeout(5.0)
                try:
                    request = self._tls.wrap_socket(request, server_side=True)
                except (OSError, ssl.SSLError):
                    self.shutdown_request(request)
                    return
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver would print a traceback to stderr for each broken connection.
        log.debug("metrics request from %s failed", client_address, exc_info=True)
