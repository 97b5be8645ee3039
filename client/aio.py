"""`AsyncZooClient`: the asyncio twin of `ZooClient`, on grpc.aio, with the same methods."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
import numpy as np

from client import protocol
from client.base import ClientBase, failure
from client.images import ImageLike, load_images
from client.prediction import Prediction
from proto import grpc_service_pb2 as pb
from zoo.card import ModelCard

T = TypeVar("T")


class AsyncZooClient(ClientBase):
    """Asyncio client; create it inside a running event loop (grpc.aio binds to it).

    async with AsyncZooClient("127.0.0.1:8001") as client:
        prediction = await client.infer("bn_cnn", images)
    """

    _grpc = grpc.aio

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncZooClient:
        return self

    async def __aexit__(
        self, *exc: type[BaseException] | BaseException | TracebackType | None
    ) -> None:
        await self.close()

    async def _run(self, call: protocol.Call[T], timeout: float | None = None) -> T:
        try:
            reply = await getattr(self._stub, call.rpc)(
                call.request,
                timeout=timeout or self.connection.timeout_s,
                metadata=self.connection.metadata,
            )
        except grpc.RpcError as error:
            raise failure(error, self.connection) from None
        return call.parse(reply)

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

    async def load_model(self, model: str) -> None:
        """Load (or reload) a model; the server must run with --allow-model-control."""
        await self._run(protocol.load_model(model))
        self._forget(model)

    async def unload_model(self, model: str) -> None:
        await self._run(protocol.unload_model(model))
        self._forget(model)

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
