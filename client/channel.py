"""How to reach the servers: addresses, credentials, options, and the retry policy."""

from __future__ import annotations

import functools
import itertools
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from zoo.errors import InvalidArgumentError

DEFAULT_TIMEOUT_S = 10.0
# grpc's 4 MiB default would refuse a batch of ~1,300 MNIST images; the server's limit
# (configurable there) is the one that should decide.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, for UNAVAILABLE on idempotent calls only."""

    attempts: int = 4
    initial_backoff_s: float = 0.05
    multiplier: float = 2.0
    max_backoff_s: float = 1.0

    def backoffs(self, idempotent: bool) -> Iterator[float]:
        """The pause before each attempt: 0 before the first, none beyond the last."""
        yield 0.0
        if not idempotent:
            return
        for attempt in range(self.attempts - 1):
            delay = min(self.initial_backoff_s * self.multiplier**attempt, self.max_backoff_s)
            # Jitter spreads the retries of many clients after a server restart.
            yield delay * random.uniform(0.5, 1.0)


NO_RETRIES = RetryPolicy(attempts=1)

# HOST:PORT, optionally after one of grpc's schemes that name a host (dns:,
# dns://AUTHORITY/, ipv4:, ipv6:), an IPv6 host in brackets. Checked here because grpc
# itself wraps a port above 65535 to another port, and reports any malformed address only
# at the first call, as UNAVAILABLE, as if the server were down.
_ADDRESS = re.compile(r"(?:dns:(?://[^/]*/)?|ipv4:|ipv6:)?(\[[^\]]+\]|[^:/\[\]]+)(?::(.*))?")
# Unix sockets have no port: they go to grpc as they are.
_PORTLESS_SCHEMES = ("unix:", "unix-abstract:")


def parse_targets(url: str | Sequence[str]) -> tuple[str, ...]:
    """`host:port`, a comma-separated list of them, or a sequence: the round-robin targets."""
    parts = url.split(",") if isinstance(url, str) else list(url)
    targets = tuple(p.strip().removeprefix("grpc://") for p in parts if p.strip())
    if not targets:
        raise InvalidArgumentError(f"expected a server address HOST:PORT, got {url!r}")
    for target in targets:
        _check_address(target)
    return targets


def _check_address(target: str) -> None:
    if target.startswith(_PORTLESS_SCHEMES):
        return
    match = _ADDRESS.fullmatch(target)
    if match is None:
        problem = "expected HOST:PORT (an IPv6 host in brackets: [::1]:8001)"
    elif match[2] is None:
        problem = "no port; expected HOST:PORT"
    elif not (match[2].isascii() and match[2].isdigit() and 1 <= int(match[2]) <= 65535):
        problem = f"the port must be a number from 1 to 65535, got {match[2]!r}"
    else:
        return
    raise InvalidArgumentError(f"server address {target!r}: {problem}")


def read_pem(source: bytes | str | Path | None, name: str, kind: str) -> bytes | None:
    """The bytes of a PEM file (or PEM bytes as given), checked to hold a `kind` block
    ("CERTIFICATE", "PRIVATE KEY"): a wrong or swapped file fails here, in one line naming
    `name`, and not as an opaque handshake failure at the first call."""
    if source is None:
        return None
    if isinstance(source, bytes):
        data, label = source, name
    else:
        label = f"{name} {str(source)!r}"
        try:
            data = Path(source).read_bytes()
        except OSError as error:
            raise InvalidArgumentError(f"{label}: {error.strerror}") from None
    # Keys come as "PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY".
    if re.search(rb"-----BEGIN [A-Z0-9 ]*" + kind.encode() + rb"-----", data) is None:
        raise InvalidArgumentError(f"{label}: not a PEM {kind.lower()}")
    return data


@dataclass(frozen=True)
class Connection:
    """How to reach the servers; picklable, so load-generator processes can rebuild it."""

    targets: tuple[str, ...]
    timeout_s: float = DEFAULT_TIMEOUT_S
    tls: bool = False
    root_certificates: bytes | None = None
    # Mutual TLS: the PEM certificate (chain) and private key this client presents.
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str | None = None  # the name the TLS certificate must carry, when not the host
    token: str | None = None
    retry: RetryPolicy = RetryPolicy()

    @functools.cached_property  # read on every call: built once
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def credentials(self) -> grpc.ChannelCredentials | None:
        if not self.tls and self.root_certificates is None and self.certificate_chain is None:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )

    def options(self) -> tuple[tuple[str, object], ...]:
        if self.server_name:
            return (*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", self.server_name))
        return CHANNEL_OPTIONS


class RoundRobin:
    """Hands out (target, stub) pairs in turn: client-side load balancing over addresses."""

    def __init__(self, pairs: Sequence[tuple[str, object]]) -> None:
        self._pairs = list(pairs)
        self._turn = itertools.count()

    def next(self) -> tuple[str, object]:
        # itertools.count's next() is atomic under the GIL, so threads may share this.
        return self._pairs[next(self._turn) % len(self._pairs)]
