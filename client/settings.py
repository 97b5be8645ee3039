"""Connection settings shared by every client command (flags, or env vars ZOO_URL, ZOO_TOKEN...)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from client.base import make_connection
from client.channel import DEFAULT_TIMEOUT_S, Connection, RetryPolicy, read_pem
from zoo.errors import InvalidArgumentError
from zoo.settings import ZooSettings

DEFAULT_URL = "127.0.0.1:8001"


class ClientSettings(ZooSettings):
    url: str = Field(
        DEFAULT_URL, description="server HOST:PORT, or several comma-separated (round-robin)"
    )
    timeout: float = Field(DEFAULT_TIMEOUT_S, gt=0, description="deadline of each call, in seconds")
    tls: bool = Field(
        False, description="connect with TLS (system root certificates unless --ca-cert)"
    )
    ca_cert: Path | None = Field(
        None, description="PEM file of the certificate authority to trust (implies TLS)"
    )
    server_name: str | None = Field(
        None, description="name the TLS certificate must carry, if not the host"
    )
    tls_client_cert: Path | None = Field(
        None,
        description="PEM certificate to present to a server that demands one "
        "(mutual TLS; needs --tls-client-key; implies TLS)",
    )
    tls_client_key: Path | None = Field(None, description="PEM private key of --tls-client-cert")
    token: str | None = Field(None, description="bearer token sent as 'authorization' metadata")

    def connection(self, retry: RetryPolicy | None = None) -> Connection:
        # Read here rather than by make_connection, so that a wrong file is named by its flag.
        if (self.tls_client_cert is None) != (self.tls_client_key is None):
            raise InvalidArgumentError("--tls-client-cert and --tls-client-key go together")
        return make_connection(
            self.url,
            timeout=self.timeout,
            tls=self.tls or self.ca_cert is not None,
            root_certificates=read_pem(self.ca_cert, "--ca-cert", "CERTIFICATE"),
            certificate_chain=read_pem(self.tls_client_cert, "--tls-client-cert", "CERTIFICATE"),
            private_key=read_pem(self.tls_client_key, "--tls-client-key", "PRIVATE KEY"),
            server_name=self.server_name,
            token=self.token,
            retry=retry,
        )
