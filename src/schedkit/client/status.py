"""Failed calls as schedkit errors: the status code's class, with BadRequest violations."""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from schedkit.errors import FieldViolation, SchedkitError, error_class_for


def error_from_rpc(exc: grpc.RpcError) -> SchedkitError:
    """The schedkit error for a failed call, blocking or asyncio (``grpc.aio.AioRpcError``),
    with BadRequest field violations decoded."""
    # A blocking call's error is also its grpc.Call; an AioRpcError carries the same three
    # accessors (code, details, trailing metadata) without being one.
    code = grpc.StatusCode.UNKNOWN
    message = ""
    status = None
    if isinstance(exc, grpc.Call | grpc.aio.AioRpcError):
        code, message = exc.code(), exc.details() or ""
        status = rpc_status.from_call(exc)
    message = message or code.name
    violations: list[FieldViolation] = []
    details: list[Any] = list(status.details) if status is not None else []
    for detail in details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations += [
                FieldViolation(v.field, v.description) for v in bad_request.field_violations
            ]
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in message:
        # gRPC's own text names neither side's setting: say which limits apply.
        message += (
            " (limits: the server's SCHEDKIT_MAX_MESSAGE_BYTES and Client.connect's "
            "max_message_bytes; send smaller batches, or pass a reference to large arguments "
            "instead of the data)"
        )
    error = error_class_for(code)(message, violations=tuple(violations))
    error.code = code
    return error
