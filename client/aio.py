"""`AsyncZooClient`: the asyncio twin of `ZooClient`, on grpc.aio, with the same methods."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
import numpy as np

from client import protocol
from client.channel import Connection, RoundRobin, deadline_error, should_retry
from client.errors import InferenceServerException
from client.images import ImageLike, load_images
from client.prediction import Prediction
from client.sync import make_connection
from proto import grpc_service_pb2 as pb
from proto import grpc_service_pb2_grpc as pb_grpc
from zoo.card import ModelCard

log = logging.getLogger(__name__)
T = TypeVar("T")


class AsyncZooClient:
    """Asyncio client; create it inside a running event loop (grpc.aio binds to it).

    async with AsyncZooClient("127.0.0.1:8001") as client:
        prediction = await client.infer("bn_cnn", images)
    """

    def __init__(self, url: str | Sequence[str], **options: Any) -> None:
        self.connection: Connection = options.pop("connection", None) or make_connection(
            url, **options
        )
        self._channels = [self._open(target) for target in self.connection.targets]
        stubs = [pb_grpc.GRPCInferenceServiceStub(channel) for channel in self._channels]
        self._stubs = RoundRobin(list(zip(self.connection.targets, stubs, strict=True)))
        self._models: dict[tuple[str, str], protocol.ServedModel] = {}

    def _open(self, target: str) -> grpc.aio.Channel:
        credentials = self.connection.credentials()
        if credentials is None:
            return grpc.aio.insecure_channel(target, options=self.connection.options())
        return grpc.aio.secure_channel(target, credentials, options=self.connection.options())

    async def close(self) -> None:
        await asyncio.gather(*(channel.close() for channel in self._channels))

    async def __aenter__(self) -> AsyncZooClient:
        return self

    async def __aexit__(
        self, *exc: type[BaseException] | BaseException | TracebackType | None
    ) -> None:
        await self.close()

    async def _run(self, call: protocol.Call[T], timeout: float | None = None) -> T:
        timeout = timeout or self.connection.timeout_s
        deadline = time.monotonic() + timeout
        last: InferenceServerException | None = None
        for backoff in self.connection.retry.backoffs(call.idempotent):
            if time.monotonic() + backoff >= deadline:
                break
            if backoff:
                await asyncio.sleep(backoff)
            target, stub = self._stubs.next()
            try:
                reply = await getattr(stub, call.rpc)(
                    call.request,
                    timeout=deadline - time.monotonic(),
                    metadata=self.connection.metadata,
                )
            except grpc.RpcError as error:
                last = InferenceServerException.from_rpc_error(error, target)
                if not should_retry(error):
                    raise last from None
                log.debug("%s on %s: %s; retrying", call.rpc, target, last)
                continue
            return call.parse(reply)
        raise deadline_error(timeout, last)

    async def is_server_live(self) -> bool:
        return await self._run(protocol.server_live())

    async def is_server_ready(self) -> bool:
        return await self._run(protocol.server_ready())

    async def is_model_ready(self, model: str, version: str | int | None = None) -> bool:
        return await self._run(protocol.model_ready(model, version))

    async def get_server_metadata(self) -> pb.ServerMetadataResponse:
        return await self._run(protocol.server_metadata())

    async def get_model_metadata(
        self, model: str, version: str | int | None = None
    ) -> pb.ModelMetadataResponse:
        return await self._run(protocol.model_metadata(model, version))

    async def get_model_config(self, model: str, version: str | int | None = None) -> Any:
        return await self._run(protocol.model_config(model, version))

    async def get_model_repository_index(self) -> pb.RepositoryIndexResponse:
        return await self._run(protocol.repository_index())

    async def get_inference_statistics(
        self, model: str = "", version: str | int | None = None
    ) -> pb.ModelStatisticsResponse:
        return await self._run(protocol.model_statistics(model, version))

    async def list_models(self) -> list[protocol.ModelStatus]:
        return await self._run(protocol.list_models())

    async def metadata(
        self, model: str, version: str | int | None = None
    ) -> protocol.ModelMetadata:
        return await self._run(protocol.metadata(model, version))

    async def model_card(self, model: str, version: str | int | None = None) -> ModelCard:
        return (await self._served_model(model, version)).card

    async def _served_model(self, model: str, version: str | int | None) -> protocol.ServedModel:
        key = (model, protocol.version_text(version))
        if key not in self._models:
            self._models[key] = await self._run(protocol.served_model(model, version))
        return self._models[key]

    async def infer(
        self,
        model: str,
        images: ImageLike | Sequence[ImageLike],
        *,
        version: str | int | None = None,
        top_k: int = 1,
        timeout: float | None = None,
    ) -> Prediction:
        batch = load_images(images)
        served = await self._served_model(model, version)
        parts = [
            await self._run(protocol.infer(served.card, piece, version, top_k), timeout)
            for piece in served.split(batch)
        ]
        return Prediction.concatenate(parts)

    async def infer_raw(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        version: str | int | None = None,
        outputs: Sequence[str] = (),
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        return await self._run(protocol.infer_raw(model, inputs, version, outputs), timeout)

    async def model_infer(
        self, request: pb.ModelInferRequest, timeout: float | None = None
    ) -> pb.ModelInferResponse:
        """Send a prebuilt request (the load tester builds its requests once, then repeats them)."""
        return await self._run(protocol.model_infer(request), timeout)
