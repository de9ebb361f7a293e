"""Bounds on what callers hold open: long-lived calls are counted, idle streams are ended.

On the asyncio server a stream costs no thread, but it still costs memory and a Redis
reader's attention, so each kind has a ceiling:

- health ``Watch`` and reflection streams (no token needed): ``max_open_streams`` each;
- ``WatchTasks`` and ``ScheduleTasks``: ``max_streams`` in all, ``max_streams_per_caller``
  per caller (a token; the peer's address when the server has no tokens);
- a stream that waits longer than ``stream_idle_timeout`` for its caller's next message ends
  with DEADLINE_EXCEEDED.

Past a ceiling a call is answered RESOURCE_EXHAUSTED at once, never queued. Unary calls are
bounded by the server's ``maximum_concurrent_rpcs``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from schedkit.service.handlers import Continuation, Handler
from schedkit.settings import Settings

HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
REFLECTION = ("/grpc.reflection.v1alpha.ServerReflection/", "/grpc.reflection.v1.ServerReflection/")

Metadata = Sequence[tuple[str, str | bytes]] | None


@dataclass(frozen=True)
class StreamLimits:
    """The ceilings, from settings."""

    streams: int
    per_caller: int
    open_streams: int
    idle_timeout: float

    @classmethod
    def of(cls, settings: Settings) -> StreamLimits:
        """The limits ``settings`` name."""
        return cls(
            streams=settings.max_streams,
            per_caller=settings.max_streams_per_caller,
            open_streams=settings.max_open_streams,
            idle_timeout=settings.stream_idle_timeout,
        )


class _Full(Exception):
    """A ceiling is reached; the message says which."""


class OpenCalls:
    """Counts of open streams by key, each under a ceiling. Used from the event loop only,
    so plain counters need no lock."""

    def __init__(self) -> None:
        self._open: Counter[str] = Counter()

    def __getitem__(self, key: str) -> int:
        return self._open[key]

    def acquire(self, ceilings: Sequence[tuple[str, int, str]]) -> None:
        """Count one more under each ``(key, ceiling, setting)``, or raise _Full naming the
        first ceiling reached (then nothing is counted)."""
        for key, ceiling, setting in ceilings:
            if self._open[key] >= ceiling:
                raise _Full(f"{ceiling} such streams are open already ({setting}); retry later")
        for key, _, _ in ceilings:
            self._open[key] += 1

    def release(self, ceilings: Sequence[tuple[str, int, str]]) -> None:
        """Count one less under each key of an :meth:`acquire`."""
        for key, _, _ in ceilings:
            self._open[key] -= 1
            if not self._open[key]:
                del self._open[key]


class StreamGuard(grpc.aio.ServerInterceptor):
    """Counts long-lived calls under their ceilings and ends idle request streams."""

    def __init__(
        self, limits: StreamLimits, caller_of: Callable[[Metadata], str | None] | None = None
    ) -> None:
        self.limits = limits
        self.open = OpenCalls()
        self._caller_of = caller_of

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        """Wrap streaming handlers so they are counted and their reads time out."""
        handler = await continuation(handler_call_details)
        if handler is None or not (handler.request_streaming or handler.response_streaming):
            return handler
        method: str = handler_call_details.method
        ceilings = self._ceilings(method, handler_call_details.invocation_metadata)
        if ceilings is None:
            return handler
        return self._guarded(handler, ceilings)

    def _ceilings(
        self, method: str, metadata: Metadata
    ) -> Callable[[grpc.aio.ServicerContext[Any, Any]], list[tuple[str, int, str]]] | None:
        limits = self.limits
        if method == HEALTH_WATCH:
            fixed = [("health-watch", limits.open_streams, "SCHEDKIT_MAX_OPEN_STREAMS")]
            return lambda _: fixed
        if method.startswith(REFLECTION):
            fixed = [("reflection", limits.open_streams, "SCHEDKIT_MAX_OPEN_STREAMS")]
            return lambda _: fixed
        if method.startswith("/grpc."):
            return None
        caller = self._caller_of(metadata) if self._caller_of is not None else None

        def ceilings(context: grpc.aio.ServicerContext[Any, Any]) -> list[tuple[str, int, str]]:
            who = caller or f"peer:{_host(context.peer())}"
            return [
                ("streams", limits.streams, "SCHEDKIT_MAX_STREAMS"),
                (who, limits.per_caller, "SCHEDKIT_MAX_STREAMS_PER_CALLER"),
            ]

        return ceilings

    def _guarded(
        self,
        handler: Handler,
        ceilings: Callable[[grpc.aio.ServicerContext[Any, Any]], list[tuple[str, int, str]]],
    ) -> Handler:
        # The stubs type handlers for the thread server; on grpc.aio they are async.
        behaviour: Any = handler.stream_stream or handler.stream_unary or handler.unary_stream
        assert behaviour is not None
        streaming_in = handler.request_streaming
        idle = self.limits.idle_timeout

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            held = ceilings(context)
            try:
                self.open.acquire(held)
            except _Full as full:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(full))
            try:
                if streaming_in:
                    request = _idle_limited(request, idle, context)
                if inspect.isasyncgenfunction(behaviour):
                    # Written here rather than yielded: one wrapper for every handler shape.
                    async for response in behaviour(request, context):
                        await context.write(response)
                    return None
                return await behaviour(request, context)
            finally:
                self.open.release(held)

        kind = (handler.request_streaming, handler.response_streaming)
        make = {
            (True, True): grpc.stream_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
        }[kind]
        return make(
            call,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


async def _idle_limited(
    requests: AsyncIterator[Any], idle: float, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[Any]:
    """``requests``, ending the call when the caller sends nothing for ``idle`` seconds."""
    iterator = aiter(requests)
    while True:
        try:
            async with asyncio.timeout(idle or None):
                request = await anext(iterator)
        except StopAsyncIteration:
            return
        except TimeoutError:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no message for {idle:g}s (SCHEDKIT_STREAM_IDLE_TIMEOUT): stream ended",
            )
        yield request


def _host(peer: str) -> str:
    """The address part of a gRPC peer string (``ipv4:127.0.0.1:5000`` -> ``127.0.0.1``)."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rsplit(":", 1)[0]
    return peer


__all__ = ["OpenCalls", "StreamGuard", "StreamLimits"]
