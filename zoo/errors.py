"""The one error hierarchy of the project.

Every error a user can cause is a `ZooError`. Its message is shown as is (one line,
saying what was expected and what arrived); `code` names the gRPC status it maps to in
the server's one table, and `exit_code` is what a CLI exits with.
"""

from __future__ import annotations


class ZooError(Exception):
    code = "UNKNOWN"
    exit_code = 2


class InvalidArgumentError(ZooError):
    code = "INVALID_ARGUMENT"


class NotFoundError(ZooError):
    code = "NOT_FOUND"


class AlreadyExistsError(ZooError):
    code = "ALREADY_EXISTS"


class FailedPreconditionError(ZooError):
    code = "FAILED_PRECONDITION"


class ResourceExhaustedError(ZooError):
    code = "RESOURCE_EXHAUSTED"


class UnavailableError(ZooError):
    code = "UNAVAILABLE"


class DeadlineExceededError(ZooError):
    code = "DEADLINE_EXCEEDED"


class CancelledError(ZooError):
    code = "CANCELLED"


class UnimplementedError(ZooError):
    """A protocol feature this server does not offer (e.g. CUDA shared memory)."""

    code = "UNIMPLEMENTED"


class DataError(InvalidArgumentError):
    """A data file is missing, truncated, foreign or fails its checksum."""


class CheckpointError(InvalidArgumentError):
    """A checkpoint is unreadable or belongs to another architecture."""


class ModelExecutionError(ZooError):
    """A model's runtime call itself failed: the server's fault, not the client's."""

    code = "INTERNAL"


class DivergedError(ZooError):
    """Training's loss became NaN or infinite."""

    code = "FAILED_PRECONDITION"
    exit_code = 1


class ExportError(ZooError):
    """An export could not be made exact (an unfoldable BatchNorm, a failed verification)."""

    code = "INTERNAL"
