"""`ZooClient`: the blocking client (method names as in tritonclient.grpc)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
import numpy as np

from client import protocol
from client.channel import (
    DEFAULT_TIMEOUT_S,
    Connection,
    RetryPolicy,
    RoundRobin,
    deadline_error,
    parse_targets,
    should_retry,
)
from client.errors import InferenceServerException
from client.images import ImageLike, load_images
from client.prediction import Prediction
from proto import grpc_service_pb2 as pb
from proto import grpc_service_pb2_grpc as pb_grpc
from zoo.card import ModelCard

log = logging.getLogger(__name__)
T = TypeVar("T")


def make_connection(
    url: str | Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    tls: bool = False,
    root_certificates: bytes | str | Path | None = None,
    server_name: str | None = None,
    token: str | None = None,
    retry: RetryPolicy | None = None,
) -> Connection:
    """Validate the keyword options both clients take into one `Connection`."""
    if isinstance(root_certificates, (str, Path)):
        root_certificates = Path(root_certificates).read_bytes()
    return Connection(
        targets=parse_targets(url),
        timeout_s=timeout,
        tls=tls,
        root_certificates=root_certificates,
        server_name=server_name,
        token=token,
        retry=retry or RetryPolicy(),
    )


class ZooClient:
    """Blocking client for one server or, round-robin, several.

        with ZooClient("127.0.0.1:8001") as client:
            prediction = client.infer("bn_cnn", "digit.png", top_k=3)

    Every call has a deadline (`timeout` seconds, per call overridable); UNAVAILABLE is
    retried with exponential backoff, on the next address, within that deadline.
    """

    def __init__(self, url: str | Sequence[str], **options: Any) -> None:
        self.connection = options.pop("connection", None) or make_connection(url, **options)
        self._channels = [self._open(target) for target in self.connection.targets]
        stubs = [pb_grpc.GRPCInferenceServiceStub(channel) for channel in self._channels]
        self._stubs = RoundRobin(list(zip(self.connection.targets, stubs, strict=True)))
        # Card and batch limit are fetched once per (model, version): they do not change
        # while a version is served, and refetching would double every infer's round trips.
        self._models: dict[tuple[str, str], protocol.ServedModel] = {}

    def _open(self, target: str) -> grpc.Channel:
        credentials = self.connection.credentials()
        if credentials is None:
            return grpc.insecure_channel(target, options=self.connection.options())
        return grpc.secure_channel(target, credentials, options=self.connection.options())

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> ZooClient:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def _run(self, call: protocol.Call[T], timeout: float | None = None) -> T:
        timeout = timeout or self.connection.timeout_s
        deadline = time.monotonic() + timeout
        last: InferenceServerException | None = None
        for backoff in self.connection.retry.backoffs(call.idempotent):
            if time.monotonic() + backoff >= deadline:
                break
            time.sleep(backoff)
            target, stub = self._stubs.next()
            try:
                reply = getattr(stub, call.rpc)(
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
