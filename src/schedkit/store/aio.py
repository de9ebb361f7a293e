"""The server's hot store calls on redis-py's asyncio client: no thread per call.

Scheduling one task, reading tasks and reading the event stream run on the server's event
loop, so a call waiting for Redis holds no thread and costs no hand-over between threads.
The scripts, the payload and the replies are :mod:`schedkit.store.store`'s own: this module only
awaits them. Everything else (batches, pages, cancels) stays on the synchronous store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from schedkit.errors import NotFound
from schedkit.model import ScheduleResult, TaskRecord
from schedkit.store.codec import StateChange, changes_of, schedule_payload, schedule_results
from schedkit.store.connect import async_client, close_async
from schedkit.store.record import NewTasks, decode
from schedkit.store.store import (
    Store,
    script_argv,
    script_text,
    store_errors,
)


class AsyncStore:
    """The same store as ``store`` (its URL, prefix, history and timeout), awaited."""

    def __init__(self, store: Store) -> None:
        if not store.url:
            raise ValueError("an asyncio store needs a store opened from a URL (Store.from_url)")
        self.store = store
        self.keys = store.keys
        self.timeout = store.timeout or None
        self.redis = async_client(store.url, self.timeout, self.timeout)
        self._schedule = self.redis.register_script(script_text("schedule"))
        self._script_keys = store.script_keys

    async def close(self) -> None:
        """Release the connections."""
        await close_async(self.redis)

    async def schedule_new(
        self, batch: NewTasks, *, window_seconds: float, now: datetime
    ) -> list[ScheduleResult]:
        """:meth:`Store.schedule_new`, awaited."""
        if not batch.rows:
            return []
        argv = script_argv(
            self.keys.task_prefix,
            self.store.history,
            now,
            int(window_seconds * 1000),
            schedule_payload(batch),
        )
        replicas = self.store.replicas
        if replicas.count and self.store.on_cluster:
            # WAIT must follow the write on the slot primary's connection, which redis-py's
            # asyncio cluster client does not lend out: the blocking store does it.
            return await asyncio.to_thread(
                self.store.schedule_new, batch, window_seconds=window_seconds, now=now
            )
        with store_errors():
            if not replicas.count:
                verdicts = await self._schedule(keys=self._script_keys, args=argv)
            else:  # WAIT on the write's own connection: see Store._run_acknowledged
                async with self.redis.pipeline(transaction=False) as pipe:
                    await self._schedule(keys=self._script_keys, args=argv, client=pipe)
                    pipe.wait(*replicas.wait_args())
                    verdicts, confirmed = await pipe.execute()
                replicas.check(int(confirmed), "schedule")
        return schedule_results(batch.rows, verdicts)

    async def get(self, task_id: str) -> TaskRecord:
        """The task with this id, or NotFound."""
        record = (await self.get_many([task_id]))[0]
        if record is None:
            raise NotFound(f"no task with id {task_id!r}")
        return record

    async def get_many(self, task_ids: Sequence[str]) -> list[TaskRecord | None]:
        """Records for ids in one round trip; None where there is none."""
        if not task_ids:
            return []
        with store_errors():
            pipe = self.redis.pipeline(transaction=False)
            for task_id in task_ids:
                pipe.hgetall(self.keys.task(task_id))
            raws: list[Any] = await pipe.execute()
        return [
            decode(task_id, raw) if raw else None
            for task_id, raw in zip(task_ids, raws, strict=True)
        ]

    async def latest_event(self) -> str:
        """The cursor of the newest event, to watch from now on."""
        with store_errors():
            newest = await self.redis.xrevrange(self.keys.events, count=1)
        return str(newest[0][0]) if newest else "0-0"

    async def events_after(self, cursor: str, *, count: int = 500) -> list[StateChange]:
        """Up to ``count`` changes after ``cursor``, without waiting for any.

        Changes of one entry share its cursor: resuming after it skips them all, so callers
        take an entry's changes together (one read always returns whole entries).
        """
        with store_errors():
            reply = await self.redis.xread({self.keys.events: cursor}, count=count)
        return changes_of(reply)
