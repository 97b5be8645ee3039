"""The client's one exception: a failed call, with the gRPC status code and the server's message."""

from __future__ import annotations

import grpc

from zoo.errors import ZooError


class InferenceServerException(ZooError):
    """A call the server refused or could not answer (named as in tritonclient).

    `code` is the gRPC status name (e.g. "NOT_FOUND") and `status_code` the grpc.StatusCode;
    `message` is the server's own text. CLIs exit with 3 for it (a server error), not 2.
    """

    exit_code = 3

    def __init__(self, status_code: grpc.StatusCode, message: str, *, target: str = "") -> None:
        self.status_code = status_code
        self.code = status_code.name
        self.message = message
        self.target = target
        where = f" (server {target})" if target else ""
        super().__init__(f"{self.code}: {message}{where}")

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError, target: str = "") -> InferenceServerException:
        # A grpc.RpcError raised by a call is also a grpc.Call carrying code() and details().
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = error.details() if hasattr(error, "details") else str(error)
        return cls(
            code or grpc.StatusCode.UNKNOWN, " ".join(str(details or "").split()), target=target
        )
