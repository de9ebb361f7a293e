"""Editing what is parked: UpdateTask's change of one SCHEDULED task, and CancelTasks'
slices. One script each (``update.lua``, ``cancel_many.lua``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import orjson

from schedkit.store.connect import store_errors
from schedkit.store.scripts import script_text
from schedkit.store.store import Store

#: The Lua files of edits.
LUA_FILES = ("update", "cancel_many")


class EditStore:
    """Task edits on top of a :class:`Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        client = store.redis
        self._update = client.register_script(script_text("update"))
        self._cancel_many = client.register_script(script_text("cancel_many"))

    def _run(
        self, script: object, *args: object, now: datetime | None = None, partition: int = 0
    ) -> object:
        argv = self.store.argv(partition, now, *args)
        keys = self.store.part_script_keys[partition]
        with store_errors():
            return script(keys=keys, args=argv)  # type: ignore[operator]

    def update(
        self,
        task_id: str,
        *,
        run_ms: int,
        fingerprint: str,
        set_fields: Sequence[str],
        remove_fields: Sequence[str],
        window_seconds: float,
        now: datetime | None = None,
    ) -> str:
        """'updated', 'missing', 'claimed' or the task's state when not SCHEDULED."""
        return str(
            self._run(
                self._update,
                task_id,
                run_ms,
                fingerprint,
                orjson.dumps(list(set_fields)),
                orjson.dumps(list(remove_fields)),
                int(window_seconds * 1000),
                now=now,
                partition=self.store.partition_of(task_id),
            )
        )

    def cancel_many(
        self, task_ids: Sequence[str], now: datetime | None = None
    ) -> tuple[int, list[str]]:
        """Cancel those not started: how many, and the ids that were already handed off."""
        if not task_ids:
            return 0, []
        # Each id in the partition it hashes to (runs of schedules too).
        by_part: dict[int, list[str]] = {}
        for task_id in task_ids:
            by_part.setdefault(self.store.partition_of(task_id), []).append(task_id)
        count, handed = 0, list[str]()
        for partition, ids in sorted(by_part.items()):
            reply = self._run(self._cancel_many, *ids, now=now, partition=partition)
            assert isinstance(reply, list)
            count += int(reply[0])
            handed.extend(str(i) for i in reply[1:])
        return count, handed
