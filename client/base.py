"""What `ZooClient` and `AsyncZooClient` share: construction, the channel, errors."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import grpc

from client import protocol
from client.channel import (
    DEFAULT_TIMEOUT_S,
    Connection,
    RetryPolicy,
    parse_targets,
    read_pem,
    resolve_endpoints,
)
from client.errors import InferenceServerException
from proto import grpc_service_pb2_grpc as pb_grpc
from zoo.errors import InvalidArgumentError

log = logging.getLogger(__name__)


def make_connection(
    url: str | Sequence[str] | None,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    tls: bool = False,
    root_certificates: bytes | str | Path | None = None,
    certificate_chain: bytes | str | Path | None = None,
    private_key: bytes | str | Path | None = None,
    server_name: str | None = None,
    token: str | None = None,
    retry: RetryPolicy | None = None,
) -> Connection:
    """Validate the keyword options both clients take into one `Connection`."""
    if (certificate_chain is None) != (private_key is None):
        raise InvalidArgumentError("certificate_chain and private_key go together")
    targets = parse_targets(url or "")
    return Connection(
        targets=targets,
        endpoints=resolve_endpoints(targets),
        timeout_s=timeout,
        tls=tls,
        root_certificates=read_pem(root_certificates, "root_certificates", "CERTIFICATE"),
        certificate_chain=read_pem(certificate_chain, "certificate_chain", "CERTIFICATE"),
        private_key=read_pem(private_key, "private_key", "PRIVATE KEY"),
        server_name=server_name,
        token=token,
        retry=retry or RetryPolicy(),
    )


class ClientBase:
    """One channel balanced over every address (client.channel), and a cache of served
    models.

    `url` is HOST:PORT, several comma-separated, or a sequence of them. `timeout` is every
    call's deadline in seconds; `tls` (with `root_certificates`, a PEM path or bytes, and
    `server_name` to override the name checked) encrypts; `certificate_chain` and
    `private_key` (PEM paths or bytes, both or neither) are the certificate this client
    presents to a server that demands one (mutual TLS; they imply `tls`); `token` is sent
    as a bearer token; `retry` is grpc's retry policy for UNAVAILABLE. A prebuilt
    `connection` replaces them all.
    """

    _grpc: ClassVar[Any] = grpc  # grpc or grpc.aio: whose channels this client opens

    def __init__(
        self,
        url: str | Sequence[str] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        tls: bool = False,
        root_certificates: bytes | str | Path | None = None,
        certificate_chain: bytes | str | Path | None = None,
        private_key: bytes | str | Path | None = None,
        server_name: str | None = None,
        token: str | None = None,
        retry: RetryPolicy | None = None,
        connection: Connection | None = None,
    ) -> None:
        self.connection = connection or make_connection(
            url, timeout=timeout, tls=tls, root_certificates=root_certificates,
            certificate_chain=certificate_chain, private_key=private_key,
            server_name=server_name, token=token, retry=retry,
        )  # fmt: skip
        self.channel = self._open(self.connection.channel_target)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        # Card and batch limit are fetched once per (model, version): they do not change
        # while a version is served, and refetching would double every infer's round trips.
        self._models: dict[tuple[str, str], protocol.ServedModel] = {}

    def _forget(self, model: str) -> None:
        """Drop a model's cached card and limits: after a load or unload they may change."""
        for key in [key for key in self._models if key[0] == model]:
            del self._models[key]

    def _open(self, target: str) -> Any:
        credentials = self.connection.credentials()
        if credentials is None:
            return self._grpc.insecure_channel(target, options=self.connection.options())
        return self._grpc.secure_channel(target, credentials, options=self.connection.options())


def failure(error: grpc.RpcError, connection: Connection) -> InferenceServerException:
    """A failed call's error, naming the addresses it went to."""
    return InferenceServerException.from_rpc_error(error, connection.display)
