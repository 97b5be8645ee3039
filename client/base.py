"""What `ZooClient` and `AsyncZooClient` share: construction, channels, retry rules."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import grpc

from client import protocol
from client.channel import (
    DEFAULT_TIMEOUT_S,
    Connection,
    RetryPolicy,
    RoundRobin,
    parse_targets,
    read_pem,
)
from client.errors import RETRYABLE_CODES, InferenceServerException
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
    return Connection(
        targets=parse_targets(url or ""),
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
    """Channels to every address, stubs handed out round-robin, and a cache of served models.

    `url` is HOST:PORT, several comma-separated, or a sequence of them. `timeout` is every
    call's deadline in seconds; `tls` (with `root_certificates`, a PEM path or bytes, and
    `server_name` to override the name checked) encrypts; `certificate_chain` and
    `private_key` (PEM paths or bytes, both or neither) are the certificate this client
    presents to a server that demands one (mutual TLS; they imply `tls`); `token` is sent
    as a bearer token; `retry` governs the backoff for UNAVAILABLE. A prebuilt
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
        self._channels = [self._open(target) for target in self.connection.targets]
        stubs = [pb_grpc.GRPCInferenceServiceStub(channel) for channel in self._channels]
        self._stubs = RoundRobin(list(zip(self.connection.targets, stubs, strict=True)))
        # Card and batch limit are fetched once per (model, version): they do not change
        # while a version is served, and refetching would double every infer's round trips.
        self._models: dict[tuple[str, str], protocol.ServedModel] = {}

    def _forget(self, model: str) -> None:
        """Drop a model's cached card and limits: after a load or unload they may change."""
        for key in [key for key in self._models if key[0] == model]:
            del self._models[key]

    @property
    def channels(self) -> list[Any]:
        """The open channels, one per address (for raw RPCs, as the load generator sends)."""
        return list(self._channels)

    def _open(self, target: str) -> Any:
        credentials = self.connection.credentials()
        if credentials is None:
            return self._grpc.insecure_channel(target, options=self.connection.options())
        return self._grpc.secure_channel(target, credentials, options=self.connection.options())


class Attempts:
    """The tries of one call: a backoff before each, one deadline across all, the last error.

    attempts = Attempts(connection, call, timeout)
    for backoff in attempts:
        sleep(backoff); try: send(timeout=attempts.remaining()) ...
        except grpc.RpcError as error: attempts.failed(error, target)
    raise attempts.exhausted()
    """

    def __init__(
        self, connection: Connection, call: protocol.Call[Any], timeout: float | None
    ) -> None:
        self.timeout = timeout or connection.timeout_s
        self.deadline = time.monotonic() + self.timeout
        self.rpc = call.rpc
        self._backoffs = connection.retry.backoffs(call.idempotent)
        self.last: InferenceServerException | None = None

    def __iter__(self) -> Iterator[float]:
        for backoff in self._backoffs:
            if time.monotonic() + backoff >= self.deadline:
                return
            yield backoff

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def failed(self, error: grpc.RpcError, target: str) -> None:
        """Remember a retryable failure; raise any other at once."""
        self.last = InferenceServerException.from_rpc_error(error, target)
        if error.code() not in RETRYABLE_CODES:
            raise self.last from None
        log.debug("%s on %s: %s; retrying", self.rpc, target, self.last)

    def exhausted(self) -> InferenceServerException:
        if self.last is not None:
            return self.last
        return InferenceServerException(
            grpc.StatusCode.DEADLINE_EXCEEDED, f"{self.rpc}: no reply within {self.timeout:g} s"
        )
