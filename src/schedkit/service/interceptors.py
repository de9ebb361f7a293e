"""The one place that turns exceptions into gRPC statuses (with google.rpc details)."""

from __future__ import annotations

import logging
import uuid
from typing import Any, NoReturn

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_interceptor import AsyncExceptionToStatusInterceptor
from grpc_status import rpc_status

from schedkit.errors import SchedkitError
from schedkit.service.handlers import Continuation, Handler

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


class ErrorInterceptor(AsyncExceptionToStatusInterceptor):
    """SchedkitError -> its status; anything else -> INTERNAL with a reference, never UNKNOWN.

    The traceback goes to the log under the reference; the client sees no internals. Only
    ``service``'s methods are wrapped: health and reflection keep their handlers as they are.
    """

    def __init__(self, service: str) -> None:
        super().__init__()
        self._prefix = f"/{service}/"

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        """Wrap this service's handlers; pass every other one through untouched."""
        if not handler_call_details.method.startswith(self._prefix):
            return await continuation(handler_call_details)
        handler: Handler | None = await super().intercept_service(  # type: ignore[no-untyped-call]
            continuation, handler_call_details
        )
        return handler

    async def handle_exception(
        self,
        ex: Exception,
        request_or_iterator: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        method_name: str,
    ) -> NoReturn:
        """Abort the call with the status ``ex`` maps to."""
        if isinstance(ex, SchedkitError):
            await context.abort_with_status(rpc_status.to_status(status_for(ex)))
        # A status set by the handler itself (context.abort) stands; anything else is a bug.
        if isinstance(ex, grpc.aio.AbortError) or context.code() is not None:
            raise ex
        reference = uuid.uuid4().hex[:12]
        log.error(
            "%s failed (ref %s)",
            method_name,
            reference,
            exc_info=ex,
            extra={"method": method_name, "ref": reference},
        )
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error (ref {reference})")
