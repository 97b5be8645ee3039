"""TLS and bearer-token authentication for `zoo serve`.

TLS: the server presents a PEM certificate chain and key (`--tls-cert`, `--tls-key`);
with `--tls-client-ca` it also demands a client certificate signed by that authority.
Tokens: with `--auth-token` (better: the environment variable ZOO_AUTH_TOKEN, which `ps`
does not show) every RPC must carry the metadata `authorization: Bearer <token>`, as
`ZooClient(token=...)`, `zoo ... --token` and tritonclient's `headers=` send it. The
standard health service stays open, so that orchestrators can probe without the secret.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health

OPEN_SERVICES = (f"/{health.SERVICE_NAME}/",)


def server_credentials(
    cert: Path, key: Path, client_ca: Path | None = None
) -> grpc.ServerCredentials:
    """TLS credentials from PEM files (ServeSettings has checked that they are PEM); with
    `client_ca`, mutual TLS: a client without a certificate signed by it cannot connect."""
    if client_ca is None:
        return grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=client_ca.read_bytes(),
        require_client_auth=True,
    )


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Refuses, with UNAUTHENTICATED, every RPC outside OPEN_SERVICES without the token."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_SERVICES):
            return handler
        sent = [
            v for k, v in handler_call_details.invocation_metadata or () if k == "authorization"
        ]
        refusal = bearer_refusal(sent, self._token)
        if refusal is not None:
            return _refusal(handler, refusal)
        return handler


def bearer_refusal(sent: list[str], token: bytes) -> str | None:
    """Why the `authorization` values sent do not carry `token`; None when one does."""
    if not sent:
        return "missing metadata 'authorization: Bearer <token>'"
    if len(sent) > 1:
        # Which copy a proxy or a later check would read is anyone's guess: refuse.
        return f"expected one 'authorization' metadata entry, got {len(sent)}"
    # As in HTTP, the scheme's case and the spaces around the value do not matter
    # (perf_analyzer's -H "authorization: Bearer T" sends " Bearer T").
    scheme, _, value = sent[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        return "expected 'authorization: Bearer <token>'"
    # A comparison in constant time: how long a refusal takes says nothing of the token.
    if not hmac.compare_digest(value.strip().encode(), token):
        return "wrong bearer token"
    return None


def _refusal(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that only refuses."""

    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return make(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
