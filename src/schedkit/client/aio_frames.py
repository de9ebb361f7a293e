"""The asyncio client's DataFrame methods: the blocking timetable code runs in a worker thread
and streams its batches over the client on the event loop, so pandas never blocks the loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from datetime import tzinfo
from typing import TYPE_CHECKING, Any, TypeVar

from schedkit.errors import Unavailable
from schedkit.model import ScheduleResult, TaskRecord
from schedkit.wire.batches import Batch

if TYPE_CHECKING:
    import pandas as pd

    from schedkit.client.aio import Client

T = TypeVar("T")


class ThreadBridge:
    """Lets the blocking timetable code, run in a worker thread, stream its batches over an
    asyncio client: each answer is awaited on the client's loop, each batch built in a thread."""

    def __init__(self, client: Client, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.loop = loop
        self._cancelled = threading.Event()
        self._step: concurrent.futures.Future[Any] | None = None

    def cancel(self) -> None:
        """On the loop, when schedule_frame is cancelled: end the stream now (its call is
        cancelled with the step in flight) and let the thread stop."""
        self._cancelled.set()
        if self._step is not None:
            self._step.cancel()

    def schedule_batches(
        self, batches: Iterable[Batch], **options: Any
    ) -> Iterator[ScheduleResult]:
        """The blocking ``schedule_batches``, in the worker thread."""
        results = self.client.schedule_batches(built_in_thread(batches), **options)
        try:
            while True:
                try:
                    yield self._on_loop(lambda: anext(results))
                except StopAsyncIteration:
                    return
        finally:
            if not self._cancelled.is_set():  # else the cancelled step ended the stream
                self._on_loop(results.aclose)

    def _on_loop(self, step: Callable[[], Awaitable[T]]) -> T:
        if self._cancelled.is_set():
            raise Unavailable("schedule_frame was cancelled")

        async def run() -> T:
            return await step()

        future = asyncio.run_coroutine_threadsafe(run(), self.loop)
        self._step = future
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise Unavailable("schedule_frame was cancelled") from None


async def built_in_thread(batches: Iterable[Batch]) -> AsyncIterator[Batch]:
    """``batches`` with each one built off the event loop (the timetable's work is pandas')."""
    iterator = iter(batches)
    while (batch := await asyncio.to_thread(next, iterator, None)) is not None:
        yield batch


def frame_of(records: list[TaskRecord], tz: str | tzinfo) -> pd.DataFrame:
    """The tasks as a DataFrame (in a worker thread: pandas is loaded and run there)."""
    from schedkit.timetable import frames

    return frames.tasks_frame(records, tz=tz)
