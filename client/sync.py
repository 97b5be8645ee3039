"""`ZooClient`: the blocking client (method names as in tritonclient.grpc)."""

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


class ZooClient(ClientBase):
    """Blocking client for one server or, round-robin, several.

        with ZooClient("127.0.0.1:8001") as client:
            prediction = client.infer("bn_cnn", "digit.png", top_k=3)

    Every call has a deadline (`timeout` seconds, per call overridable); grpc balances
    calls over the healthy addresses and retries UNAVAILABLE for idempotent calls (all
    but load_model and unload_model) with exponential backoff, within that deadline.
    """

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> ZooClient:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def _run(self, call: protocol.Call[T], timeout: float | None = None) -> T:
        try:
            reply = getattr(self._stub, call.rpc)(
                call.request,
                timeout=timeout or self.connection.timeout_s,
                metadata=self.connection.metadata,
            )
        except grpc.RpcError as error:
            raise failure(error, self.connection) from None
        return call.parse(reply)

    # tritonclient-style calls, returning protobuf replies or plain values.
    def is_server_live(self) -> bool:
        return self._run(protocol.server_live())

    def is_server_ready(self) -> bool:
        return self._run(protocol.server_ready())

    def is_model_ready(self, model: str, version: str | int | None = None) -> bool:
        return self._run(protocol.model_ready(model, version))

    def get_server_metadata(self) -> pb.ServerMetadataResponse:
        return self._run(protocol.server_metadata())

    def get_model_metadata(
        self, model: str, version: str | int | None = None
    ) -> pb.ModelMetadataResponse:
        return self._run(protocol.model_metadata(model, version))

    def get_model_config(self, model: str, version: str | int | None = None) -> Any:
        return self._run(protocol.model_config(model, version))

    def get_model_repository_index(self) -> pb.RepositoryIndexResponse:
        return self._run(protocol.repository_index())

    def get_inference_statistics(
        self, model: str = "", version: str | int | None = None
    ) -> pb.ModelStatisticsResponse:
        return self._run(protocol.model_statistics(model, version))

    def load_model(self, model: str) -> None:
        """Load (or reload) a model; the server must run with --allow-model-control."""
        self._run(protocol.load_model(model))
        self._forget(model)

    def unload_model(self, model: str) -> None:
        self._run(protocol.unload_model(model))
        self._forget(model)

    # The zoo's own calls, returning typed values.
    def list_models(self) -> list[protocol.ModelStatus]:
        return self._run(protocol.list_models())

    def metadata(self, model: str, version: str | int | None = None) -> protocol.ModelMetadata:
        return self._run(protocol.metadata(model, version))

    def model_card(self, model: str, version: str | int | None = None) -> ModelCard:
        return (self._served_model(model, version)).card

    def _served_model(self, model: str, version: str | int | None) -> protocol.ServedModel:
        key = (model, protocol.version_text(version))
        if key not in self._models:
            self._models[key] = self._run(protocol.served_model(model, version))
        return self._models[key]

    def infer(
        self,
        model: str,
        images: ImageLike | Sequence[ImageLike],
        *,
        version: str | int | None = None,
        top_k: int = 1,
        timeout: float | None = None,
    ) -> Prediction:
        """Classify images (arrays, PIL images, image or .npy paths; see client.images)."""
        batch = load_images(images)
        served = self._served_model(model, version)
        parts = [
            self._run(protocol.infer(served.card, piece, version, top_k), timeout)
            for piece in served.split(batch)
        ]
        return Prediction.concatenate(parts)

    def infer_raw(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        version: str | int | None = None,
        outputs: Sequence[str] = (),
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Send named arrays as they are; every output (or those named) comes back by name."""
        return self._run(protocol.infer_raw(model, inputs, version, outputs), timeout)
