"""Connection settings shared by every client command (flags, or env vars ZOO_URL, ZOO_TOKEN...)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from client.base import make_connection
from client.channel import DEFAULT_TIMEOUT_S, Connection, RetryPolicy
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
    token: str | None = Field(None, description="bearer token sent as 'authorization' metadata")

    def connection(self, retry: RetryPolicy | None = None) -> Connection:
        if self.ca_cert is not None and not self.ca_cert.is_file():
            raise InvalidArgumentError(f"--ca-cert {str(self.ca_cert)!r}: no such file")
        return make_connection(
            self.url,
            timeout=self.timeout,
            tls=self.tls or self.ca_cert is not None,
            root_certificates=self.ca_cert,
            server_name=self.server_name,
            token=self.token,
            retry=retry,
        )
