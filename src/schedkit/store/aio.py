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
from schedkit.store.connect import async_client, close_async, is_cluster, store_errors
from schedkit.store.record import NewTasks, decode
from schedkit.store.scripts import script_argv, script_text
from schedkit.store.store import Store


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
        replicas = self.store.replicas
        if self.store.partitions > 1:
            return await self._schedule_split(batch, window_seconds=window_seconds, now=now)
        argv = script_argv(
            self.keys.task_prefix,
            self.store.history,
            now,
            int(window_seconds * 1000),
            schedule_payload(batch),
        )
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

    async def _schedule_split(
        self, batch: NewTasks, *, window_seconds: float, now: datetime
    ) -> list[ScheduleResult]:
        """A batch of a partitioned store: one script call per partition."""
        if self.store.replicas.count:
            # WAIT per server, after that server's writes: the blocking store groups them.
            return await asyncio.to_thread(
                self.store.schedule_new, batch, window_seconds=window_seconds, now=now
            )
        parts = self.store.split(batch)
        window = int(window_seconds * 1000)
        replies = []
        with store_errors():
            # One after the other: a few partitions cost a few round trips, and concurrent
            # commands on one asyncio cluster client leave coroutines behind when cancelled.
            for part in parts:
                replies.append(
                    await self._schedule(
                        keys=self.store.part_script_keys[part.partition],
                        args=self.store.argv(
                            part.partition, now, window, schedule_payload(part.tasks)
                        ),
                    )
                )
        return self.store.merge_results(batch, parts, replies)

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
        store = self.store
        with store_errors():
            pipe = self.redis.pipeline(transaction=False)
            for task_id in task_ids:
                pipe.hgetall(store.parts[store.partition_of(task_id)].task(task_id))
            raws: list[Any] = await pipe.execute()
        return [
            decode(task_id, raw) if raw else None
            for task_id, raw in zip(task_ids, raws, strict=True)
        ]

    @property
    def streams(self) -> list[str]:
        """The event stream of every partition, in partition order."""
        return [keys.events for keys in self.store.parts]

    async def latest_event(self) -> str:
        """The cursor of the newest event, to watch from now on: with several partitions,
        the newest entry id of each stream, space-separated (see :func:`stream_cursors`)."""
        with store_errors():
            pipe = self.redis.pipeline(transaction=False)
            for stream in self.streams:
                pipe.xrevrange(stream, count=1)
            replies = await pipe.execute()
        return " ".join(str(newest[0][0]) if newest else "0-0" for newest in replies)

    async def events_after(self, cursor: str, *, count: int = 500) -> list[StateChange]:
        """Up to ``count`` changes per partition after ``cursor``, without waiting for any.

        Changes of one entry share its cursor: resuming after it skips them all, so callers
        take an entry's changes together (one read always returns whole entries). With
        several partitions every change of one read carries the cursor after the whole read,
        and changes of different streams are ordered by time.
        """
        cursors = stream_cursors(cursor, self.streams)
        reply: Any
        with store_errors():
            if len(cursors) == 1 or not self.on_cluster:
                reply = await self.redis.xread(dict(cursors), count=count)  # type: ignore[arg-type]
            else:  # a cluster reads one slot per command
                reply = []
                for stream, at in cursors.items():
                    reply.extend(await self.redis.xread({stream: at}, count=count) or [])
        if len(cursors) == 1:
            return changes_of(reply)
        for stream, entries in reply or []:
            if entries:
                cursors[str(stream)] = str(entries[-1][0])
        after = " ".join(cursors.values())
        changes = sorted(changes_of(reply), key=lambda c: _entry_order(c.cursor))
        return [StateChange(after, c.task_id, c.state, c.at) for c in changes]

    @property
    def on_cluster(self) -> bool:
        """True when the store is a Redis Cluster."""
        return is_cluster(self.store.url)


def stream_cursors(cursor: str, streams: Sequence[str]) -> dict[str, str]:
    """{stream: entry id} of a (composite) cursor, as :meth:`AsyncStore.latest_event` writes
    it; a cursor that does not fit (the server's own, never a caller's) starts from 0."""
    ids = cursor.split(" ")
    if len(ids) != len(streams):
        ids = ["0-0"] * len(streams)
    return dict(zip(streams, ids, strict=True))


def _entry_order(entry: str) -> tuple[int, int]:
    ms, _, seq = entry.partition("-")
    return int(ms), int(seq or 0)
