"""How to reach the servers: addresses, credentials, options, and the retry policy.

Balancing, health and retries are grpc's own, set in the channel's service config:
- one channel for every address: a single target (a DNS name with many addresses, as a
  Kubernetes headless Service has, is re-resolved by grpc) or a list of HOST:PORT,
  resolved here once into one ipv4:/ipv6: address list;
- the `round_robin` policy over those addresses;
- client-side health checking against grpc.health.v1 (the server as ""): an address
  that is down or draining (NOT_SERVING) gets no calls until it is healthy again, and is
  re-probed by grpc with its connection back-off; a server without the health service
  (UNIMPLEMENTED) counts as healthy;
- grpc's retry policy for UNAVAILABLE on the idempotent methods.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from proto import grpc_service_pb2 as pb
from zoo.errors import InvalidArgumentError

DEFAULT_TIMEOUT_S = 10.0
# grpc's 4 MiB default would refuse a batch of ~1,300 MNIST images; the server's limit
# (configurable there) is the one that should decide.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)


SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
# Resending these could do harm (a load reloads the model); every other call is safe to resend.
NOT_IDEMPOTENT = frozenset({"RepositoryModelLoad", "RepositoryModelUnload"})
MAX_ATTEMPTS = 5  # grpc's cap on a retry policy's maxAttempts


@dataclass(frozen=True)
class RetryPolicy:
    """grpc's retry policy for UNAVAILABLE on idempotent calls: up to `attempts` tries,
    the n-th pause drawn by grpc between 0 and min(initial * multiplier**n, max) seconds
    (the jitter spreads the retries of many clients after a server restart)."""

    attempts: int = 4
    initial_backoff_s: float = 0.05
    multiplier: float = 2.0
    max_backoff_s: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.attempts <= MAX_ATTEMPTS:
            raise InvalidArgumentError(
                f"retry attempts: expected 1 to {MAX_ATTEMPTS} (grpc's limit), got {self.attempts}"
            )

    def method_config(self) -> list[dict[str, object]]:
        if self.attempts == 1:
            return []
        names = [
            {"service": SERVICE.full_name, "method": m.name}
            for m in SERVICE.methods
            if m.name not in NOT_IDEMPOTENT
        ]
        policy = {
            "maxAttempts": self.attempts,
            "initialBackoff": f"{self.initial_backoff_s}s",
            "maxBackoff": f"{self.max_backoff_s}s",
            "backoffMultiplier": self.multiplier,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
        return [{"name": names, "retryPolicy": policy}]


NO_RETRIES = RetryPolicy(attempts=1)


def service_config(retry: RetryPolicy) -> str:
    """The channel's service config: round-robin, health-checked, retried (see above)."""
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "healthCheckConfig": {"serviceName": ""},
            "methodConfig": retry.method_config(),
        }
    )


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
    if len(targets) > 1:
        for target in targets:
            if target.startswith((*_PORTLESS_SCHEMES, "dns:")):
                raise InvalidArgumentError(
                    f"server address {target!r} in a list: a list takes HOST:PORT entries; "
                    "give a dns: name or a unix: socket alone"
                )
    return targets


def resolve_endpoints(targets: tuple[str, ...]) -> tuple[str, ...]:
    """The addresses grpc balances over: a single target as it is (grpc resolves it, and
    re-resolves a DNS name); each HOST:PORT of a list resolved now, to IP:PORT."""
    if len(targets) == 1:
        return targets
    endpoints: list[str] = []
    for target in targets:
        match = _ADDRESS.fullmatch(target)
        assert match is not None and match[2] is not None  # checked by parse_targets
        host = match[1].strip("[]")
        try:
            infos = socket.getaddrinfo(host, int(match[2]), type=socket.SOCK_STREAM)
        except OSError as error:
            raise InvalidArgumentError(
                f"server address {target!r}: cannot resolve {host!r} ({error.strerror})"
            ) from None
        for family, _, _, _, address in infos:
            endpoint = (
                f"[{address[0]}]:{address[1]}"
                if family == socket.AF_INET6
                else (f"{address[0]}:{address[1]}")
            )
            if endpoint not in endpoints:
                endpoints.append(endpoint)
    return tuple(endpoints)


def channel_target(endpoints: tuple[str, ...]) -> str:
    """One grpc target for every endpoint: ipv4:A:P,B:P, or ipv6: (IPv4 addresses mapped
    into IPv6) when any is IPv6, as grpc's address lists are of one family."""
    if len(endpoints) == 1:
        return endpoints[0]
    if not any(e.startswith("[") for e in endpoints):
        return "ipv4:" + ",".join(endpoints)
    mapped = []
    for endpoint in endpoints:
        host, _, port = endpoint.rpartition(":")
        ip = ipaddress.ip_address(host.strip("[]"))
        if isinstance(ip, ipaddress.IPv4Address):
            ip = ipaddress.IPv6Address(f"::ffff:{ip}")
        mapped.append(f"[{ip}]:{port}")
    return "ipv6:" + ",".join(mapped)


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
    endpoints: tuple[str, ...] = ()  # the resolved addresses (resolve_endpoints)
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

    @property
    def display(self) -> str:
        """The addresses as the user gave them, for messages."""
        return ",".join(self.targets)

    @property
    def channel_target(self) -> str:
        return channel_target(self.endpoints or self.targets)

    def options(self) -> tuple[tuple[str, object], ...]:
        options = [*CHANNEL_OPTIONS, ("grpc.service_config", service_config(self.retry))]
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        elif len(self.targets) > 1:
            # A list is dialled by IP address; TLS checks the first entry's name, the
            # name a certificate shared by the replicas carries.
            options.append(("grpc.default_authority", self.targets[0]))
        return tuple(options)
