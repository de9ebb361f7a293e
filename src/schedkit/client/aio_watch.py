"""The asyncio client's WatchTasks call as an async iterator and an async context manager."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import cast

import grpc
import grpc.aio

from schedkit.client.status import error_from_rpc
from schedkit.model import TaskRecord
from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.wire.convert import task_from_proto
from schedkit.wire.metadata import WATCHING_HEADER

WatchCall = grpc.aio.UnaryStreamCall[pb.WatchTasksRequest, pb.WatchTasksResponse]


class Watch:
    """A WatchTasks call as an async iterator of tasks, and an async context manager that
    starts it and cancels it on exit. Iterating without ``async with`` starts it on the first
    step; :meth:`aclose` ends it early."""

    def __init__(self, start: Callable[[], WatchCall]) -> None:
        self._start = start
        self._call: WatchCall | None = None
        self._closed = False

    async def __aenter__(self) -> Watch:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start the call and wait until the server says it is watching (once)."""
        if self._call is not None:
            return
        self._call = call = self._start()
        try:
            # The server sends its headers once its starting point is fixed; a call refused
            # before that (no token, bad filter) ends with no header and a status instead.
            headers = dict(await call.initial_metadata() or ())
            if WATCHING_HEADER not in headers and await call.code() is not grpc.StatusCode.OK:
                await call.read()  # raises the call's error
        except grpc.aio.AioRpcError as exc:
            self._closed = True
            raise error_from_rpc(exc) from exc
        except BaseException:
            call.cancel()
            raise

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> TaskRecord:
        await self.start()
        assert self._call is not None
        if self._closed:
            raise StopAsyncIteration
        try:
            response = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            self._closed = True
            if exc.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
                raise StopAsyncIteration from None
            raise error_from_rpc(exc) from exc
        except asyncio.CancelledError:
            # grpc.aio raises CancelledError from a read of a call we cancelled (aclose from
            # another task): that is the end of the watch, unless this task is the one
            # being cancelled.
            task = asyncio.current_task()
            if self._closed and task is not None and not task.cancelling():
                raise StopAsyncIteration from None
            raise
        if response is grpc.aio.EOF:
            self._closed = True
            raise StopAsyncIteration
        return task_from_proto(cast(pb.WatchTasksResponse, response).task)

    async def aclose(self) -> None:
        """End the call (the server frees its stream slot)."""
        self._closed = True
        if self._call is not None:
            self._call.cancel()
