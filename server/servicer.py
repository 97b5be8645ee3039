"""The gRPC servicer: translates RPCs to InferenceCore calls and errors to statuses.

Nothing else happens here. STATUS is the project's one table from ZooError codes
(zoo/errors.py) to gRPC status codes.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from proto import grpc_service_pb2 as pb
from proto.grpc_service_pb2_grpc import GRPCInferenceServiceServicer
from server.core import InferenceCore
from zoo.errors import ZooError

log = logging.getLogger(__name__)

STATUS: dict[str, grpc.StatusCode] = {
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "ALREADY_EXISTS": grpc.StatusCode.ALREADY_EXISTS,
    "FAILED_PRECONDITION": grpc.StatusCode.FAILED_PRECONDITION,
    "RESOURCE_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "DEADLINE_EXCEEDED": grpc.StatusCode.DEADLINE_EXCEEDED,
    "CANCELLED": grpc.StatusCode.CANCELLED,
    "INTERNAL": grpc.StatusCode.INTERNAL,
    "UNKNOWN": grpc.StatusCode.UNKNOWN,
}

R = TypeVar("R")


def status_of(error: ZooError) -> grpc.StatusCode:
    return STATUS.get(error.code, grpc.StatusCode.UNKNOWN)


def failure(error: Exception, method: str) -> tuple[grpc.StatusCode, str]:
    """A ZooError's status and message; anything else is our bug: INTERNAL, logged."""
    if isinstance(error, ZooError):
        return status_of(error), str(error)
    log.error("%s failed", method, exc_info=error)
    return grpc.StatusCode.INTERNAL, f"{method}: internal server error"


def _translated(method: Callable[..., R]) -> Callable[..., R]:
    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> R:
        try:
            return method(self, request, context)
        except Exception as error:
            context.abort(*failure(error, method.__name__))

    return wrapper


class _StreamCall:
    """The call context that one stream's requests share, as the batcher sees it.

    A stream's requests run one at a time, so one cancel hook at a time is enough: each
    request's replaces the last, where grpc would keep every one until the stream ends.
    """

    def __init__(self, context: grpc.ServicerContext) -> None:
        self._context = context
        self._on_cancel: Callable[[], None] | None = None
        context.add_callback(self._cancelled)

    def time_remaining(self) -> float | None:
        return self._context.time_remaining()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        self._on_cancel = callback
        return True

    def _cancelled(self) -> None:
        if self._on_cancel is not None:
            self._on_cancel()


class InferenceServicer(GRPCInferenceServiceServicer):
    def __init__(self, core: InferenceCore) -> None:
        self._core = core

    @_translated
    def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @_translated
    def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._core.ready)

    @_translated
    def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._core.model_ready(request.name, request.version))

    @_translated
    def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        return self._core.server_metadata()

    @_translated
    def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Any
    ) -> pb.ModelMetadataResponse:
        return self._core.model_metadata(request.name, request.version)

    @_translated
    def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        return self._core.model_config(request.name, request.version)

    @_translated
    def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.ServicerContext
    ) -> pb.ModelInferResponse:
        return self._core.infer(request, context)

    def ModelStreamInfer(
        self, requests: Iterator[pb.ModelInferRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.ModelStreamInferResponse]:
        # An error answers its request and the stream goes on, as in Triton.
        call = _StreamCall(context)
        for request in requests:
            try:
                yield pb.ModelStreamInferResponse(infer_response=self._core.infer(request, call))
            except Exception as error:
                reply = pb.ModelInferResponse(
                    model_name=request.model_name,
                    model_version=request.model_version,
                    id=request.id,
                )
                _, message = failure(error, "ModelStreamInfer")
                yield pb.ModelStreamInferResponse(error_message=message, infer_response=reply)

    @_translated
    def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Any
    ) -> pb.ModelStatisticsResponse:
        return self._core.statistics(request.name, request.version)

    @_translated
    def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Any
    ) -> pb.RepositoryIndexResponse:
        return self._core.repository_index(request.ready)

    @_translated
    def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        self._core.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @_translated
    def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        self._core.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()
