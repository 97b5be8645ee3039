"""Assembling the gRPC server: create_server() builds it, serve() runs it until a signal.

The inference service, the standard grpc.health.v1.Health (the server as "" and each
model by name) and server reflection, on one port, with TLS and a bearer token when asked
for (server.security); Prometheus /metrics on another.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from proto import grpc_service_pb2, grpc_service_pb2_grpc
from server.core import InferenceCore
from server.security import TokenAuthInterceptor, server_credentials
from server.servicer import InferenceServicer
from server.settings import ServeSettings
from zoo.errors import FailedPreconditionError

log = logging.getLogger(__name__)

INFERENCE_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ZooServer:
    """A built server: `start()` loads the repository and listens; `stop()` drains."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.health = health.HealthServicer()
        self.core = InferenceCore(settings, on_change=self._model_changed)
        limit = settings.max_message_mb * 1024 * 1024
        token = settings.auth_token
        # Without a token no interceptor runs: it would cost every request some Python.
        interceptors = [TokenAuthInterceptor(token.get_secret_value())] if token is not None else []
        self.grpc = grpc.server(
            ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="grpc"),
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # Without this a second server silently shares a port that is in use.
                ("grpc.so_reuseport", 0),
            ],
            interceptors=interceptors,
        )
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self.core), self.grpc
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            (INFERENCE_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc
        )
        self.port = self._bind(settings.host, settings.port)
        self.metrics_port: int | None = None

    def _bind(self, host: str, port: int) -> int:
        cert, key = self.settings.tls_cert, self.settings.tls_key
        try:
            if cert is not None and key is not None:
                credentials = server_credentials(cert, key, self.settings.tls_client_ca)
                return self.grpc.add_secure_port(f"{host}:{port}", credentials)
            return self.grpc.add_insecure_port(f"{host}:{port}")
        except RuntimeError:
            raise FailedPreconditionError(f"cannot listen on {host}:{port} (in use?)") from None

    def _model_changed(self, name: str, ready: bool) -> None:
        self.health.set(name, SERVING if ready else NOT_SERVING)

    def start(self) -> None:
        self.core.start()
        if self.settings.metrics_port >= 0:
            self.metrics_port = self.core.metrics.serve(
                self.settings.host, self.settings.metrics_port
            )
        self.grpc.start()
        for service in ("", INFERENCE_SERVICE):
            self.health.set(service, SERVING)
        # Modules, sessions and protos loaded so far live as long as the server: out of the
        # collector's sight, a full collection no longer walks them (10 ms here) while
        # every request waits.
        gc.freeze()

    def stop(self, grace: float) -> None:
        """Health NOT_SERVING, refuse new RPCs, give in-flight ones `grace` seconds."""
        self.health.enter_graceful_shutdown()
        self.core.ready = False
        self.grpc.stop(grace).wait()
        self.core.stop()


def create_server(settings: ServeSettings) -> ZooServer:
    return ZooServer(settings)


def serve(settings: ServeSettings, on_ready: Callable[[ZooServer], None] = lambda s: None) -> int:
    """Run until SIGTERM or SIGINT, then stop gracefully; the exit status is 0."""
    server = create_server(settings)
    stopping = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        log.info(
            "%s: stopping, in-flight requests get %.1f s",
            signal.Signals(signum).name,
            settings.grace,
        )
        stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    server.start()
    on_ready(server)
    while not stopping.wait(1.0):
        pass
    server.stop(settings.grace)
    log.info("stopped")
    return 0
