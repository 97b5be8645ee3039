"""Assembling the gRPC server: create_server() builds it, serve() runs it until a signal.

The inference service, the standard grpc.health.v1.Health (the server as "" and each
model by name) and server reflection, on one port, with TLS and a bearer token when asked
for (server.security); Prometheus /metrics on another (over TLS too, when the gRPC port
has it). At most `max_in_flight` RPCs run at once: grpc refuses the others with
RESOURCE_EXHAUSTED before they take a thread or memory.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import ssl
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from server import health
from server.core import InferenceCore
from server.http import HttpServer
from server.metrics import MetricsServer
from server.runtime import default_infer_threads
from server.security import TokenAuthInterceptor, server_credentials
from server.servicer import SERVICE, InferenceServicer, add_to_server
from server.settings import ServeSettings
from server.workers import Peers, WorkerRole, replay_journal
from zoo.errors import FailedPreconditionError

log = logging.getLogger(__name__)

# How long past the grace period a stop waits for grpc before it gives up on it.
STOP_MARGIN_S = 2.0


class ZooServer:
    """A built server: `start()` loads the repository and listens; `stop()` drains.

    With a `role`, one worker of several sharing the port (server.supervisor): the port
    is bound with SO_REUSEPORT, and a private Unix socket reaches the worker's peers.
    """

    def __init__(self, settings: ServeSettings, role: WorkerRole | None = None) -> None:
        self.settings = settings
        self.role = role
        self.health = health.Health()
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
                # Without this a second server silently shares a port that is in use;
                # the workers of one supervisor share theirs on purpose.
                ("grpc.so_reuseport", int(role is not None)),
            ],
            interceptors=interceptors,
            maximum_concurrent_rpcs=settings.max_in_flight,
        )
        peers = None
        if role is not None:
            peers = Peers(role, token.get_secret_value() if token is not None else None)
            self.grpc.add_insecure_port(role.address)  # in the supervisor's 0700 folder
        threads = settings.infer_threads or default_infer_threads()
        self.infer_pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="infer")
        add_to_server(InferenceServicer(self.core, peers), self.grpc, self.infer_pool)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            (SERVICE.full_name, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc
        )
        self.port = self._bind(settings.host, settings.port)
        self.metrics: MetricsServer | None = None
        self.http = (
            HttpServer(self.core, settings, peers, self.infer_pool)
            if settings.http_port >= 0
            else None
        )
        self.http_port: int | None = None

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
        self.health.set(name, health.SERVING if ready else health.NOT_SERVING)

    @property
    def metrics_port(self) -> int | None:
        return self.metrics.server_port if self.metrics is not None else None

    def start(self) -> None:
        self.metrics = serve_metrics(self.settings, self.core.metrics.registry)
        if self.http is not None:
            host, port = self.settings.host, self.settings.http_port
            try:
                self.http_port = self.http.start(
                    host, port, tls_context(self.settings), reuse_port=self.role is not None
                )
            except OSError as error:
                raise FailedPreconditionError(
                    f"cannot serve HTTP on {host}:{port} ({error.strerror}): "
                    "pick another --http-port, or -1 for none"
                ) from None
        self.core.start()
        if self.role is not None:
            replay_journal(
                self.role,
                lambda r: self.core.load(r.model_name, r.parameters),
                self.core.unload,
                lambda r: self.core.register_shared_memory(r.name, r.key, r.offset, r.byte_size),
                self.core.unregister_shared_memory,
            )
        if not self.core.manager.index():
            log.warning("the repository %s holds no model folder", self.settings.repository)
        self.grpc.start()
        for service in ("", SERVICE.full_name):
            self.health.set(service, health.SERVING)
        # Modules, sessions and protos loaded so far live as long as the server: out of the
        # collector's sight, a full collection no longer walks them (10 ms here) while
        # every request waits.
        gc.freeze()

    def stop(self, grace: float) -> bool:
        """Health NOT_SERVING (watches end), refuse new RPCs, give in-flight ones `grace`
        seconds. False when grpc had not finished even STOP_MARGIN_S after that."""
        self.health.shut_down()
        self.core.ready = False
        # HTTP drains beside gRPC, within the same grace period.
        http_stop = threading.Thread(target=self.http.stop, name="http-stop") if self.http else None
        if http_stop is not None:
            http_stop.start()
        # grpc's stop can wait for ever on a stream (a race in grpcio seen after streams
        # whose messages failed to parse): bounded here, whatever the streams do.
        stopped = self.grpc.stop(grace).wait(grace + STOP_MARGIN_S)
        if not stopped:
            log.warning("gRPC had not stopped %.1f s after the grace period", STOP_MARGIN_S)
        if http_stop is not None:
            http_stop.join(grace + STOP_MARGIN_S)
        if self.metrics is not None:
            self.metrics.shutdown()
        self.infer_pool.shutdown(wait=False)
        self.core.stop()
        return stopped


def tls_context(settings: ServeSettings) -> ssl.SSLContext | None:
    """The gRPC port's TLS settings, for the HTTP and metrics ports: one policy for all."""
    cert, key, client_ca = settings.tls_cert, settings.tls_key, settings.tls_client_ca
    if cert is None or key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def serve_metrics(settings: ServeSettings, registry: CollectorRegistry) -> MetricsServer | None:
    """/metrics of `registry` on --metrics-port (None when it is -1)."""
    if settings.metrics_port < 0:
        return None
    host, port = settings.host, settings.metrics_port
    try:
        return MetricsServer.serve(registry, host, port, tls_context(settings))
    except OSError as error:
        raise FailedPreconditionError(
            f"cannot serve metrics on {host}:{port} ({error.strerror}): "
            "pick another --metrics-port, or -1 for none"
        ) from None


def create_server(settings: ServeSettings, role: WorkerRole | None = None) -> ZooServer:
    return ZooServer(settings, role)


def serve(
    settings: ServeSettings,
    on_ready: Callable[[ZooServer], None] = lambda s: None,
    role: WorkerRole | None = None,
) -> int:
    """Run until SIGTERM or SIGINT, then stop gracefully; the exit status is 0."""
    server = create_server(settings, role)
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
    if not server.stop(settings.grace):
        # A thread grpc left stuck in a handler would hold the interpreter's exit (its
        # thread pool is joined then): leave without it, having said so.
        log.warning("stopped; exiting without waiting for gRPC's threads")
        logging.shutdown()
        sys.stdout.flush()
        os._exit(0)
    log.info("stopped")
    return 0
