"""The gRPC servicer: translates RPCs to InferenceCore calls and errors to statuses.

Nothing else happens here; the table from errors to statuses is server.status.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from proto import grpc_service_pb2 as pb
from proto.grpc_service_pb2_grpc import GRPCInferenceServiceServicer
from server.core import InferenceCore
from server.status import MAX_MESSAGE_CHARS, STATUS, failure
from server.workers import Peers, is_local_call, merge_statistics
from zoo.errors import InvalidArgumentError

log = logging.getLogger(__name__)


R = TypeVar("R")
SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]


@dataclass(frozen=True)
class Unparseable:
    """What a request that is not a valid protobuf message deserializes to."""

    message_type: str
    error: str

    def refusal(self) -> InvalidArgumentError:
        return InvalidArgumentError(
            f"cannot parse the request as {self.message_type}: {self.error}"
        )


def _tolerant(message_type: type[Message]) -> Callable[[bytes], Message | Unparseable]:
    # grpc answers a deserializer's exception with INTERNAL ("Exception deserializing
    # request!") and a logged traceback; a client's garbage is INVALID_ARGUMENT, so the
    # deserializer never raises and the handler refuses the marker.
    def parse(data: bytes) -> Message | Unparseable:
        try:
            return message_type.FromString(data)
        except (DecodeError, RuntimeWarning, ValueError) as error:
            return Unparseable(message_type.DESCRIPTOR.full_name, str(error) or "invalid bytes")

    return parse


def _translated(method: Callable[..., R]) -> Callable[..., R]:
    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> R:
        try:
            if isinstance(request, Unparseable):
                raise request.refusal()
            return method(self, request, context)
        except Exception as error:
            code, message = failure(error, method.__name__)
            context.abort(STATUS[code], message)

    return wrapper


def _on_pool(method: Callable[..., R], pool: ThreadPoolExecutor) -> Callable[..., R]:
    """`method`, to be run by grpc's server on `pool` rather than on its own pool.
    (grpc's sync server looks for this attribute on a handler; where it does not, the
    handler runs on the server's pool: slower under load, the same answers.)"""

    def on_pool(request: Any, context: grpc.ServicerContext) -> R:
        return method(request, context)

    on_pool.experimental_thread_pool = pool  # type: ignore[attr-defined]
    return on_pool


def add_to_server(
    servicer: InferenceServicer, server: grpc.Server, infer_pool: ThreadPoolExecutor | None = None
) -> None:
    """Register `servicer` as the generated code would, but with deserializers that never
    raise (see _tolerant), and as registered methods: grpc's core then names the handler
    of each call, where a generic handler is searched for in Python on every call.
    ModelInfer runs on `infer_pool` when given: a few threads, so that the GIL is not
    fought over by many (server.settings, infer_threads), while streams and health
    watches, which hold a thread each for as long as they are open, keep the server's."""
    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }

    def behaviour(name: str) -> Callable[..., Any]:
        method = getattr(servicer, name)
        return _on_pool(method, infer_pool) if name == "ModelInfer" and infer_pool else method

    handlers = {
        m.name: kinds[(m.client_streaming, m.server_streaming)](
            behaviour(m.name),
            request_deserializer=_tolerant(getattr(pb, m.input_type.name)),
            response_serializer=getattr(pb, m.output_type.name).SerializeToString,
        )
        for m in SERVICE.methods
    }
    server.add_registered_method_handlers(SERVICE.full_name, handlers)


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
    """`peers`: the other worker processes of one `zoo serve --processes N`, whose
    statistics are summed with ours and who load and unload what we do."""

    def __init__(self, core: InferenceCore, peers: Peers | None = None) -> None:
        self._core = core
        self._peers = peers

    def _fan_out(self, context: grpc.ServicerContext) -> Peers | None:
        return None if self._peers is None or is_local_call(context) else self._peers

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
                if isinstance(request, Unparseable):
                    raise request.refusal()
                yield pb.ModelStreamInferResponse(infer_response=self._core.infer(request, call))
            except Exception as error:
                reply = pb.ModelInferResponse()
                if not isinstance(request, Unparseable):
                    reply.model_name = request.model_name[:MAX_MESSAGE_CHARS]
                    reply.model_version = request.model_version[:MAX_MESSAGE_CHARS]
                    reply.id = request.id[:MAX_MESSAGE_CHARS]
                _, message = failure(error, "ModelStreamInfer")
                yield pb.ModelStreamInferResponse(error_message=message, infer_response=reply)

    @_translated
    def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        reply = self._core.statistics(request.name, request.version)
        peers = self._fan_out(context)
        return reply if peers is None else merge_statistics([reply, *peers.statistics(request)])

    @_translated
    def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Any
    ) -> pb.RepositoryIndexResponse:
        return self._core.repository_index(request.ready)

    @_translated
    def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        self._core.load(request.model_name, request.parameters)
        if (peers := self._fan_out(context)) is not None:
            peers.load(request)
        return pb.RepositoryModelLoadResponse()

    @_translated
    def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        self._core.unload(request.model_name)
        if (peers := self._fan_out(context)) is not None:
            peers.unload(request)
        return pb.RepositoryModelUnloadResponse()

    @_translated
    def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: Any
    ) -> pb.SystemSharedMemoryStatusResponse:
        return self._core.shared_memory_status(request.name)

    @_translated
    def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: grpc.ServicerContext
    ) -> pb.SystemSharedMemoryRegisterResponse:
        self._core.register_shared_memory(
            request.name, request.key, request.offset, request.byte_size
        )
        if (peers := self._fan_out(context)) is not None:
            peers.register_shared_memory(request)
        return pb.SystemSharedMemoryRegisterResponse()

    @_translated
    def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: grpc.ServicerContext
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self._core.unregister_shared_memory(request.name)
        if (peers := self._fan_out(context)) is not None:
            peers.unregister_shared_memory(request)
        return pb.SystemSharedMemoryUnregisterResponse()

    @_translated
    def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest, context: Any
    ) -> pb.CudaSharedMemoryStatusResponse:
        return self._core.cuda_shared_memory_status(request.name)

    @_translated
    def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest, context: Any
    ) -> pb.CudaSharedMemoryRegisterResponse:
        self._core.register_cuda_shared_memory(request.name)
        return pb.CudaSharedMemoryRegisterResponse()

    @_translated
    def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: Any
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        return pb.CudaSharedMemoryUnregisterResponse()  # none is ever registered
