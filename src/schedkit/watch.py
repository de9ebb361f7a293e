"""WatchTasks' reads on redis-py's asyncio client: a watcher is a coroutine, not a thread.

One reader per server blocks on the event stream and wakes every watcher when something is
appended; each watcher then reads the entries after its own cursor without blocking, so a
thousand watchers hold one blocked Redis connection, not a thousand. A watcher also reads
every few seconds unwoken, so a store that stops answering surfaces as UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import redis
import redis.asyncio

from schedkit.errors import Unavailable
from schedkit.model import TaskRecord
from schedkit.record import decode
from schedkit.schedules import matching_changes, wanted_changes
from schedkit.store import StateChange, Store, TaskQuery, changes_of

log = logging.getLogger(__name__)

#: A watcher reads at least this often even when not woken (seconds).
REREAD_EVERY = 5.0
#: The reader's longest wait on the stream: it bounds how long closing the feed takes.
TAIL_BLOCK_SECONDS = 1.0


@contextlib.contextmanager
def _store_errors() -> Iterator[None]:
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise Unavailable(f"schedule store unreachable: {exc}") from exc


class ChangeFeed:
    """State changes for any number of watchers, on one asyncio event loop."""

    def __init__(self, store: Store) -> None:
        if not store.url:
            raise ValueError("a change feed needs a store opened from a URL (Store.from_url)")
        self._events_key = store.keys.events
        self._task_key = store.keys.task
        timeout = store.timeout or None
        self._redis = _client(store.url, timeout, timeout)
        self._tail = _client(store.url, timeout, timeout + TAIL_BLOCK_SECONDS if timeout else None)
        self._appended = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        """Start following the stream (call from the loop that runs the watchers)."""
        self._reader = asyncio.create_task(self._follow_tail(), name="schedkit-change-feed")

    async def close(self) -> None:
        """Stop the reader and release the connections."""
        self._closing = True
        if self._reader is not None:
            # redis-py's asyncio reads can swallow a cancellation; the flag ends the loop then.
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(TAIL_BLOCK_SECONDS + 1):
                    await self._reader
        await self._redis.aclose()
        await self._tail.aclose()

    async def latest(self) -> str:
        """The cursor of the newest event, to watch from now on."""
        with _store_errors():
            newest = await self._redis.xrevrange(self._events_key, count=1)
        return str(newest[0][0]) if newest else "0-0"

    async def follow(
        self, query: TaskQuery, cursor: str
    ) -> AsyncIterator[tuple[TaskRecord, StateChange]]:
        """(task, change) for every change after ``cursor`` that ``query`` selects, for ever."""
        while True:
            appended = self._appended  # taken before reading: a later append sets it
            with _store_errors():
                reply = await self._redis.xread({self._events_key: cursor}, count=500)
            changes = changes_of(reply)
            if not changes:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(REREAD_EVERY):
                        await appended.wait()
                continue
            cursor = changes[-1].cursor
            wanted = wanted_changes(query, changes)
            records = await self._records([c.task_id for c in wanted])
            for found in matching_changes(query, wanted, records):
                yield found

    async def _records(self, task_ids: Sequence[str]) -> list[TaskRecord | None]:
        if not task_ids:
            return []
        with _store_errors():
            pipe = self._redis.pipeline(transaction=False)
            for task_id in task_ids:
                pipe.hgetall(self._task_key(task_id))
            raws: list[Any] = await pipe.execute()
        return [
            decode(task_id, raw) if raw else None
            for task_id, raw in zip(task_ids, raws, strict=True)
        ]

    async def _follow_tail(self) -> None:
        """Wake the watchers whenever the stream grows; outlive any store outage."""
        backoff = 0.5
        cursor = ""
        while not self._closing:
            try:
                cursor = cursor or await self.latest()
                with _store_errors():
                    reply = await self._tail.xread(
                        {self._events_key: cursor}, count=1, block=int(TAIL_BLOCK_SECONDS * 1000)
                    )
                if reply:
                    # Skip to the newest entry: watchers read what they need themselves.
                    cursor = await self.latest()
                    self._wake()
                backoff = 0.5
            except Unavailable as exc:
                log.warning("change feed: %s; retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    def _wake(self) -> None:
        appended, self._appended = self._appended, asyncio.Event()
        appended.set()


def _client(url: str, connect: float | None, read_timeout: float | None) -> redis.asyncio.Redis:
    return redis.asyncio.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=connect,
        socket_timeout=read_timeout,
        socket_keepalive=True,
    )
