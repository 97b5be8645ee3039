"""The project's one table from ZooError codes (zoo/errors.py) to what each protocol
answers, gRPC status codes and HTTP status codes, and the one way a failure becomes a
message: capped, and logged as a client's mistake or, for our own bugs, as an error."""

from __future__ import annotations

import logging
import threading
import time

import grpc

from zoo.errors import ZooError

log = logging.getLogger(__name__)

# code: (gRPC status, HTTP status)
_TABLE: dict[str, tuple[grpc.StatusCode, int]] = {
    "INVALID_ARGUMENT": (grpc.StatusCode.INVALID_ARGUMENT, 400),
    "NOT_FOUND": (grpc.StatusCode.NOT_FOUND, 404),
    "ALREADY_EXISTS": (grpc.StatusCode.ALREADY_EXISTS, 409),
    "FAILED_PRECONDITION": (grpc.StatusCode.FAILED_PRECONDITION, 400),
    "RESOURCE_EXHAUSTED": (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    "UNAVAILABLE": (grpc.StatusCode.UNAVAILABLE, 503),
    "DEADLINE_EXCEEDED": (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    "CANCELLED": (grpc.StatusCode.CANCELLED, 499),  # as nginx: the client went away
    "UNAUTHENTICATED": (grpc.StatusCode.UNAUTHENTICATED, 401),
    "UNIMPLEMENTED": (grpc.StatusCode.UNIMPLEMENTED, 501),
    "INTERNAL": (grpc.StatusCode.INTERNAL, 500),
    "UNKNOWN": (grpc.StatusCode.UNKNOWN, 500),
}
STATUS: dict[str, grpc.StatusCode] = {code: g for code, (g, _) in _TABLE.items()}
HTTP_STATUS: dict[str, int] = {code: h for code, (_, h) in _TABLE.items()}

# An error message quotes what the client sent (names, versions): capped, so that a
# 100 kB name cannot make the reply's trailing metadata exceed what grpc will carry.
MAX_MESSAGE_CHARS = 1000


class _ClientMistakeLog:
    """One log line per client mistake, at most one a second; the rest are counted."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self._interval = interval_s
        self._lock = threading.Lock()
        self._next = 0.0
        self._skipped = 0

    def __call__(self, method: str, code: str, message: str) -> None:
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                self._skipped += 1
                return
            self._next, skipped, self._skipped = now + self._interval, self._skipped, 0
        more = f" (and {skipped} more since the last such line)" if skipped else ""
        log.info("%s: %s: %s%s", method, code, message[:200], more)


_client_mistake = _ClientMistakeLog()


def failure(error: Exception, method: str) -> tuple[str, str]:
    """A ZooError's code and message; anything else is our bug: INTERNAL, logged."""
    if isinstance(error, ZooError):
        code = error.code if error.code in _TABLE else "UNKNOWN"
        message = str(error)
        if len(message) > MAX_MESSAGE_CHARS:
            message = f"{message[:MAX_MESSAGE_CHARS]}... ({len(message):,} characters)"
        _client_mistake(method, code, message)
        return code, message
    log.error("%s failed", method, exc_info=error)
    return "INTERNAL", f"{method}: internal server error"
