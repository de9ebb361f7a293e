"""Every Redis key schedkit writes, in one place: the whole data model on one screen.

``{prefix}:t:{id}``        hash   one task record (fields: see ``schedkit.store.record``)
``{prefix}:state:{STATE}`` zset   task ids in that state, scored by run time (ms since epoch);
                                  ``state:SCHEDULED`` is the due-time index the dispatcher claims
``{prefix}:claims``        zset   ids claimed by a dispatcher, scored by lease deadline (ms)
``{prefix}:events``        stream state changes (id, state) that WatchTasks follows; newly
                                  scheduled tasks share entries, up to 100 ids in one
``{prefix}:wake``          list   a nudge: work entered the hand-off window; dispatchers BLPOP it
``{prefix}:stats``         hash   running totals (scheduled, handed, started, finished:STATE,
                                  start lateness buckets) that the metrics endpoint reads

The task key is ``t`` rather than ``task``: every parked task pays for its key's length.
A task id derived from an idempotency key is a hash of that key, so the task record itself is
the idempotency index: no extra key per task.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix."""

    prefix: str = "schedkit"

    def task(self, task_id: str) -> str:
        """The hash holding one task's record."""
        return f"{self.prefix}:t:{task_id}"

    def state(self, state: str) -> str:
        """The run-time index of tasks in ``state``."""
        return f"{self.prefix}:state:{state}"

    @property
    def claims(self) -> str:
        """The lease index of claimed tasks."""
        return f"{self.prefix}:claims"

    @property
    def events(self) -> str:
        """The stream of state changes."""
        return f"{self.prefix}:events"

    @property
    def stats(self) -> str:
        """The hash of running totals behind the metrics."""
        return f"{self.prefix}:stats"

    @property
    def wake(self) -> str:
        """The list dispatchers block on."""
        return f"{self.prefix}:wake"
