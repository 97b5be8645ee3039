"""The standard grpc.health.v1.Health service, whose Watch streams end at shutdown.

grpc's own HealthServicer keeps a Watch open until the client leaves, so one open watch
held a stopping server for its whole grace period. Here shutdown sends NOT_SERVING to
every watcher and then ends its stream, so that only requests in flight hold the stop.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class Health(health_pb2_grpc.HealthServicer):
    def __init__(self) -> None:
        self._status: dict[str, int] = {}
        self._changed = threading.Condition()
        self._shutting_down = False

    def set(self, service: str, status: int) -> None:
        """Set a service's status (ignored once shutting down: everything is NOT_SERVING)."""
        with self._changed:
            if not self._shutting_down:
                self._status[service] = status
                self._changed.notify_all()

    def shut_down(self) -> None:
        """Every service NOT_SERVING for good; every Watch sends that and ends."""
        with self._changed:
            self._status = dict.fromkeys(self._status, NOT_SERVING)
            self._shutting_down = True
            self._changed.notify_all()

    def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service[:200]!r}")
        return health_pb2.HealthCheckResponse(status=status)

    def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> Iterator[health_pb2.HealthCheckResponse]:
        # The protocol: the current status at once, then each change; an unknown service
        # is SERVICE_UNKNOWN (it may appear later), not an error.
        left = threading.Event()

        def wake() -> None:
            left.set()
            with self._changed:
                self._changed.notify_all()

        context.add_callback(wake)
        sent = None
        while True:
            with self._changed:
                # `left` is read under the lock that wake() notifies under: no lost wake-up.
                while not left.is_set():
                    status = self._status.get(request.service, SERVICE_UNKNOWN)
                    ending = self._shutting_down
                    if status != sent or ending:
                        break
                    self._changed.wait()
                else:
                    return
            if status != sent:
                sent = status
                yield health_pb2.HealthCheckResponse(status=status)
            if ending:
                return
