"""The asyncio client's ScheduleTasks stream: a writer task that sends batches within a window
in flight, and a reader that matches answers (client/answers) and gives up on a stalled server.

The writer is a task of ours rather than a request iterator handed to grpc: grpc.aio swallows
an exception raised by a request iterator and cancels the call, so the caller's own error (a
failing spec source, say) would be lost. Here it ends the stream and is raised as it is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable
from typing import Any

import grpc
import grpc.aio

from schedkit.client.answers import Pending, stalled
from schedkit.client.status import error_from_rpc
from schedkit.errors import SchedkitError, Unavailable
from schedkit.model import ScheduleResult
from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.v1 import schedule_service_pb2_grpc as pb_grpc
from schedkit.wire.batches import Batch

Call = grpc.aio.StreamStreamCall[pb.ScheduleTasksRequest, pb.ScheduleTasksResponse]


async def stream_batches(
    stub: pb_grpc.ScheduleServiceAsyncStub,
    batches: Iterable[Batch] | AsyncIterable[Batch],
    *,
    max_in_flight: int,
    stall_timeout: float | None,
    metadata: tuple[tuple[str, str], ...],
) -> AsyncGenerator[ScheduleResult, None]:
    """One result per item of every batch, in order (see ``Client.schedule_batches``)."""
    pending = Pending()
    slots = asyncio.Semaphore(max_in_flight)
    call: Call = stub.ScheduleTasks(metadata=metadata)
    writer = asyncio.create_task(_write(call, batches, pending, slots))
    watch = _Watch(pending, stall_timeout)
    try:
        while (response := await watch.next(call, writer)) is not None:
            slots.release()
            for result in pending.answer(response):
                yield result
        for result in pending.unsent():
            yield result
    except grpc.aio.AioRpcError as exc:
        if _status_lost(exc):
            raise await _lost_status(stub, metadata) from exc
        raise error_from_rpc(exc) from exc
    finally:
        call.cancel()
        writer.cancel()
        if writer.done() and not writer.cancelled():
            writer.exception()  # retrieved: it was raised already, or the call failed first


def _status_lost(exc: grpc.aio.AioRpcError) -> bool:
    """Whether grpc.aio replaced the server's status with its own INTERNAL: a write that raced
    the server ending the call (a refused token, a stream over its bound) overwrites the status
    the server sent (grpc/grpc#36066; the blocking API reports it)."""
    return exc.code() is grpc.StatusCode.INTERNAL and exc.details() == "Internal error from Core"


async def _lost_status(
    stub: pb_grpc.ScheduleServiceAsyncStub, metadata: tuple[tuple[str, str], ...]
) -> SchedkitError:
    """The most likely reason for a lost status: the server's own answer to the same
    credentials on a unary call (it checks tokens the same way), else Unavailable."""
    try:
        await stub.ListTaskTypes(pb.ListTaskTypesRequest(), metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as probe:
        return error_from_rpc(probe)
    return Unavailable(
        "the server ended the ScheduleTasks stream before reading it and grpc.aio lost its "
        "reason (too many open streams for this caller?); re-sending keyed tasks is safe"
    )


async def _write(
    call: Call,
    batches: Iterable[Batch] | AsyncIterable[Batch],
    pending: Pending,
    slots: asyncio.Semaphore,
) -> None:
    """Send each batch that carries something, at most the window ahead of the answers."""
    try:
        async for batch in _each(batches):
            if not batch.sent:
                pending.add(batch)  # nothing to send: answered from its local errors
                continue
            await slots.acquire()
            pending.add(batch)
            await call.write(batch.request)
        await call.done_writing()
    except grpc.aio.AioRpcError:
        return  # the call ended: the reader gets its status
    except asyncio.InvalidStateError:
        return  # the call was cancelled or finished under us: the reader says why


async def _each(batches: Iterable[Batch] | AsyncIterable[Batch]) -> AsyncIterator[Batch]:
    if isinstance(batches, AsyncIterable):
        async for batch in batches:
            yield batch
    else:
        for batch in batches:
            yield batch


class _Watch:
    """Reads the next answer, raising the writer's own error, or Unavailable when batches wait
    for an answer and none came for ``stall_timeout`` seconds."""

    def __init__(self, pending: Pending, stall_timeout: float | None) -> None:
        self.pending = pending
        self.stall_timeout = stall_timeout
        self.last = time.monotonic()
        self.tick = None if stall_timeout is None else min(1.0, stall_timeout / 4)

    async def next(self, call: Call, writer: asyncio.Task[None]) -> pb.ScheduleTasksResponse | None:
        """The next response, or None at the end of the stream."""
        read: asyncio.Future[Any] = asyncio.ensure_future(call.read())
        try:
            while True:
                waits: set[asyncio.Future[Any]] = {read} if writer.done() else {read, writer}
                done, _ = await asyncio.wait(
                    waits, timeout=self.tick, return_when=asyncio.FIRST_COMPLETED
                )
                if read in done:
                    response = read.result()
                    self.last = time.monotonic()
                    return None if response is grpc.aio.EOF else response
                if writer in done and not writer.cancelled() and writer.exception() is not None:
                    raise writer.exception()  # type: ignore[misc]  # not None: checked above
                if self.stall_timeout is None:
                    continue
                if not self.pending.waiting:
                    self.last = time.monotonic()  # nothing asked: the clock runs from the next
                elif time.monotonic() - self.last > self.stall_timeout:
                    raise stalled(self.stall_timeout)
        finally:
            if not read.done():
                # Given up (stall, the writer's error, the caller's cancellation): the call
                # is cancelled next; whatever the read ends with is collected, not logged.
                read.add_done_callback(_collect)
                read.cancel()


def _collect(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
