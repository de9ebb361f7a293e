"""Editing what is parked: UpdateTask's change of one SCHEDULED task, and CancelTasks'
slices. One script each (``update.lua``, ``cancel_many.lua``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import orjson

from schedkit.store.store import Store, script_argv, script_text, store_errors

#: The Lua files of edits.
LUA_FILES = ("update", "cancel_many")


class EditStore:
    """Task edits on top of a :class:`Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        client = store.redis
        self._update = client.register_script(script_text("update"))
        self._cancel_many = client.register_script(script_text("cancel_many"))

    def _run(self, script: object, *args: object, now: datetime | None = None) -> object:
        argv = script_argv(self.store.keys.task_prefix, self.store.history, now, *args)
        with store_errors():
            return script(keys=self.store.script_keys, args=argv)  # type: ignore[operator]

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
            )
        )

    def cancel_many(
        self, task_ids: Sequence[str], now: datetime | None = None
    ) -> tuple[int, list[str]]:
        """Cancel those not started: how many, and the ids that were already handed off."""
        if not task_ids:
            return 0, []
        reply = self._run(self._cancel_many, *task_ids, now=now)
        assert isinstance(reply, list)
        return int(reply[0]), [str(i) for i in reply[1:]]
