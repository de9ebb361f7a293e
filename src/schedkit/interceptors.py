"""The one place that turns exceptions into gRPC statuses (with google.rpc details)."""

from __future__ import annotations

import logging
import uuid
from typing import Any, NoReturn

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_interceptor import ExceptionToStatusInterceptor
from grpc_status import rpc_status

from schedkit.errors import SchedkitError

log = logging.getLogger(__name__)


def status_for(error: SchedkitError) -> status_pb2.Status:
    """The google.rpc.Status of a schedkit error, with BadRequest when fields are named."""
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    if error.violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in error.violations
            ]
        )
        status.details.add().Pack(bad_request)
    return status


class ErrorInterceptor(ExceptionToStatusInterceptor):
    """SchedkitError -> its status; anything else -> INTERNAL with a reference, never UNKNOWN.

    The traceback goes to the log under the reference; the client sees no internals.
    """

    def handle_exception(
        self,
        ex: Exception,
        request_or_iterator: Any,
        context: grpc.ServicerContext,
        method_name: str,
    ) -> NoReturn:
        """Abort the call with the status ``ex`` maps to."""
        if isinstance(ex, SchedkitError):
            context.abort_with_status(rpc_status.to_status(status_for(ex)))
        # A status set by the handler itself (context.abort) stands; anything else is a bug.
        if context.code() is None:  # type: ignore[attr-defined]
            reference = uuid.uuid4().hex[:12]
            log.error(
                "%s failed (ref %s)",
                method_name,
                reference,
                exc_info=ex,
                extra={"method": method_name, "ref": reference},
            )
            context.abort(grpc.StatusCode.INTERNAL, f"internal error (ref {reference})")
        raise ex
