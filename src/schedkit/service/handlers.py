"""Type names for grpc.aio server interceptors, said once for the three that schedkit has."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import grpc

#: A method handler (grpc's stubs type it for the thread server; on grpc.aio it is async).
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
#: What an interceptor calls to get the next handler of a call.
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]"
