"""The one exception tree of schedkit; every class names the gRPC status it becomes.

::

    SchedkitError                      INTERNAL (never sent as UNKNOWN)
    ├── ConfigError                    (raised locally: bad settings or CLI flags)
    ├── InvalidArgument                INVALID_ARGUMENT, with BadRequest field violations
    ├── NotFound                       NOT_FOUND
    ├── AlreadyExists                  ALREADY_EXISTS  (a key reused with other content)
    ├── FailedPrecondition             FAILED_PRECONDITION  (cancel a task that started)
    ├── Unauthenticated                UNAUTHENTICATED
    ├── ResourceExhausted              RESOURCE_EXHAUSTED
    └── Unavailable                    UNAVAILABLE  (store or broker unreachable)

The server's interceptor turns these into statuses; the client turns statuses back into them,
so ``except SchedkitError`` catches every failure on either side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: its path (``spec.args``, ``row 4: run_at``) and what is wrong with it."""

    field: str
    description: str


class SchedkitError(Exception):
    """Root of every schedkit error. Unexpected ones become INTERNAL."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, violations: tuple[FieldViolation, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.violations = violations


class ConfigError(SchedkitError):
    """Settings, flags or the Celery app reference cannot be used."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class InvalidArgument(SchedkitError):
    """The request is malformed; ``violations`` names each bad field."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    @classmethod
    def for_field(cls, field: str, description: str) -> InvalidArgument:
        """One violation, with the field named in the message too."""
        return cls.for_fields([FieldViolation(field, description)])

    @classmethod
    def for_fields(cls, violations: Sequence[FieldViolation]) -> InvalidArgument:
        """Several violations; the message names each field in turn."""
        return cls(
            "; ".join(f"{v.field}: {v.description}" for v in violations),
            violations=tuple(violations),
        )


class NotFound(SchedkitError):
    """No task has that id."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(SchedkitError):
    """An idempotency key is already used by a task with different content."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(SchedkitError):
    """The task is in a state that does not allow the call, such as cancelling a started task."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(SchedkitError):
    """The call carries no valid credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(SchedkitError):
    """A size limit was exceeded."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(SchedkitError):
    """The store, the broker or the server cannot be reached now; retrying later may work."""

    code = grpc.StatusCode.UNAVAILABLE


_BY_CODE: dict[grpc.StatusCode, type[SchedkitError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Unauthenticated,
        ResourceExhausted,
        Unavailable,
    )
}


#: How much of a caller's text an error message repeats: enough to recognise it, never so
#: much that the error outgrows the message limit (a 1 MB label name echoed back would).
EXCERPT_CHARS = 64


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """``text`` itself when short, else its first ``limit`` characters and an ellipsis."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


def error_class_for(code: grpc.StatusCode) -> type[SchedkitError]:
    """The schedkit error class a gRPC status code maps back to (SchedkitError if none)."""
    return _BY_CODE.get(code, SchedkitError)
