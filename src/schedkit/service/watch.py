"""WatchTasks' reads on redis-py's asyncio client: a watcher is a coroutine, not a thread.

One reader per server blocks on the event stream and wakes every watcher when something is
appended; each watcher then reads the entries after its own cursor without blocking, so a
thousand watchers hold one blocked Redis connection, not a thousand. The reader runs only
while someone watches: every scheduled task appends to the stream, and following it for
nobody would cost each call a round trip. A watcher also reads every few seconds unwoken, so
a store that stops answering surfaces as UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from schedkit.backoff import Backoff
from schedkit.errors import Unavailable
from schedkit.model import TaskRecord
from schedkit.service.schedules import matching_changes, wanted_changes
from schedkit.store.aio import AsyncStore, stream_cursors
from schedkit.store.codec import StateChange
from schedkit.store.connect import async_client, close_async, store_errors
from schedkit.store.query import TaskQuery

log = logging.getLogger(__name__)

#: A watcher reads at least this often even when not woken (seconds).
REREAD_EVERY = 5.0
#: The reader's longest wait on the stream: it bounds how long closing the feed takes.
TAIL_BLOCK_SECONDS = 1.0
#: How often the reader looks at the partitions' streams of a cluster, which cannot block on
#: several slots in one read (seconds), and per partition (a look is a read of each stream):
#: 50 ms for up to 5 partitions, longer beyond, so a look costs at most 100 reads a second.
CLUSTER_TAIL_POLL = 0.05
CLUSTER_TAIL_POLL_PER_PARTITION = 0.01


class ChangeFeed:
    """State changes for any number of watchers, on one asyncio event loop."""

    def __init__(self, store: AsyncStore) -> None:
        self._store = store
        timeout = store.timeout
        assert store.store.url
        # Blocking reads wait on purpose: a connection of their own, whose read timeout
        # allows for the wait.
        self._tail = async_client(
            store.store.url, timeout, timeout + TAIL_BLOCK_SECONDS if timeout else None
        )
        self._appended = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._watchers = 0
        self._closing = False

    async def close(self) -> None:
        """Stop the reader and release its connection."""
        self._closing = True
        if self._reader is not None:
            # redis-py's asyncio reads can swallow a cancellation; the flag ends the loop then.
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(TAIL_BLOCK_SECONDS + 1):
                    await self._reader
        await close_async(self._tail)

    async def latest(self) -> str:
        """The cursor of the newest event, to watch from now on."""
        return await self._store.latest_event()

    async def follow(
        self, query: TaskQuery, cursor: str
    ) -> AsyncIterator[tuple[TaskRecord, StateChange]]:
        """(task, change) for every change after ``cursor`` that ``query`` selects, for ever."""
        self._watchers += 1
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._follow_tail(), name="schedkit-change-feed")
        try:
            async for found in self._follow(query, cursor):
                yield found
        finally:
            self._watchers -= 1

    async def _follow(
        self, query: TaskQuery, cursor: str
    ) -> AsyncIterator[tuple[TaskRecord, StateChange]]:
        while True:
            appended = self._appended  # taken before reading: a later append sets it
            changes = await self._store.events_after(cursor)
            _raise_if_cancelled()
            if not changes:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(REREAD_EVERY):
                        await appended.wait()
                continue
            cursor = changes[-1].cursor
            wanted = wanted_changes(query, changes)
            records = await self._store.get_many([c.task_id for c in wanted])
            _raise_if_cancelled()
            for found in matching_changes(query, wanted, records):
                yield found

    async def _follow_tail(self) -> None:
        """Wake the watchers whenever the stream grows, while there are any; outlive any
        store outage."""
        backoff = Backoff()  # 0.5 s, doubling up to 10 s, until a read goes through
        cursor = ""
        streams = self._store.streams
        while self._watchers and not self._closing:
            try:
                cursor = cursor or await self.latest()
                if len(streams) > 1 and self._store.on_cluster:
                    # A cluster blocks on one slot per command: look at every stream, often.
                    changes = await self._store.events_after(cursor, count=1)
                    if changes:
                        cursor = changes[-1].cursor
                        self._wake()
                    else:
                        await asyncio.sleep(
                            max(CLUSTER_TAIL_POLL, CLUSTER_TAIL_POLL_PER_PARTITION * len(streams))
                        )
                    backoff.succeeded()
                    continue
                cursors = stream_cursors(cursor, streams)
                with store_errors():
                    reply: Any = await self._tail.xread(
                        dict(cursors),  # type: ignore[arg-type]
                        count=1,
                        block=int(TAIL_BLOCK_SECONDS * 1000),
                    )
                if reply:
                    for stream, entries in reply:  # watchers read the entries themselves
                        cursors[str(stream)] = str(entries[-1][0])
                    cursor = " ".join(cursors.values())
                    self._wake()
                backoff.succeeded()
            except Unavailable as exc:
                wait = backoff.failed()
                log.warning("change feed: %s; retrying in %.1fs", exc, wait)
                await asyncio.sleep(wait)  # close() cancels the reader, sleep included

    def _wake(self) -> None:
        appended, self._appended = self._appended, asyncio.Event()
        appended.set()


def _raise_if_cancelled() -> None:
    """Re-raise a cancellation that a Redis read swallowed (redis-py's asyncio reads can):
    a watcher whose caller went away must end, or it holds its stream slot for ever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
