"""Every Redis key schedkit writes, in one place: the whole data model on one screen.

``{prefix}:t:{id}``        hash   one task record (fields: see ``schedkit.store.record``)
``{prefix}:state:{STATE}`` zset   task ids in that state, scored by run time (ms since epoch);
                                  ``state:SCHEDULED`` is the due-time index the dispatcher claims
``{prefix}:claims``        zset   ids claimed by a dispatcher, scored by lease deadline (ms)
``{prefix}:events``        stream state changes (id, state) that WatchTasks follows; newly
                                  scheduled tasks share entries, up to 100 ids in one
``{prefix}:wake``          list   a nudge: work entered the hand-off window; dispatchers BLPOP it
``{prefix}:flight``        hash   per queue ('' the default), tasks claimed or handed off and not
                                  yet started: what the dispatcher keeps under ``max_in_flight``
``{prefix}:stats``         hash   running totals that the metrics endpoint reads; fields:
                                  :class:`Stat` (finished:STATE, late:BOUND, ...)

The task key is ``t`` rather than ``task``: every parked task pays for its key's length.
A task id derived from an idempotency key is a hash of that key, so the task record itself is
the idempotency index: no extra key per task.

How the Lua scripts get these names (they never build one from the prefix): every script
call passes the same ``KEYS``, :meth:`Keys.script_keys`: the fixed keys named in
:data:`SCRIPT_KEYS` in that order, then one state index per ``TaskState`` in declaration
order (13 keys). The header ``schedkit.store.header`` renders from the same two lists gives
them Lua names (``claims``, ``events``, ``stats``, ``wake``, ``state_keys[STATE]``), the
stats fields theirs (``stat.handed``, ``stat.finished .. STATE``) and the record fields
theirs (``field.run``). Task records are found inside scripts (claim, page, purge and
redeliver read ids from indexes), so they cannot all be declared: ``ARGV[1]`` is
:attr:`Keys.task_prefix` (``{prefix}:t:``) and a script's ``tkey(id)`` appends the id to it.
ARGV[2] is the event history length, ARGV[3] the caller's clock (ms); a script's own
arguments start at ARGV[4].
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from schedkit.model import TaskState

#: The fixed keys of every script call, by their :class:`Keys` property (and Lua) names, in
#: the order they open ``KEYS``; the state indexes follow.
SCRIPT_KEYS = ("claims", "events", "stats", "wake", "flight")


class EventField(enum.StrEnum):
    """Fields of an event stream entry; the Lua header names each ``event_field.<lower>``."""

    IDS = "id"  # one id, or up to EVENT_IDS of them separated by spaces
    STATE = "s"


#: Most task ids one event entry carries: an entry per task was a fifth of the cost of
#: storing a batch; 100 bounds an entry (about 1.3 KB), and so the stream at its history.
EVENT_IDS = 100


class Stat(enum.StrEnum):
    """Fields of the stats hash; the Lua header names each ``stat.<member in lower case>``."""

    SCHEDULED = "scheduled"
    HANDED = "handed"
    REDELIVERED = "redelivered"
    STARTED = "started"
    RETRIED = "retried"
    FINISHED = "finished:"  # followed by the final state
    REFUSED_CANCELLED = "refused:cancelled"
    REFUSED_DUPLICATE = "refused:duplicate"
    LATE = "late:"  # followed by the bucket's upper bound in ms
    LATE_INF = "late:inf"  # later than the last bound
    LATE_SUM_MS = "late_sum_ms"
    #: Not a total: the in-flight count at which a start wakes the dispatchers (the claim
    #: writes it from its bound, a tenth below it, so refills come in batches).
    FLIGHT_WAKE = "flight:wake"


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix."""

    prefix: str = "schedkit"

    def task(self, task_id: str) -> str:
        """The hash holding one task's record."""
        return f"{self.prefix}:t:{task_id}"

    @property
    def task_prefix(self) -> str:
        """What every task key starts with: scripts append an id to it."""
        return self.task("")

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
    def flight(self) -> str:
        """Per queue, tasks claimed or handed off and not yet started."""
        return f"{self.prefix}:flight"

    @property
    def wake(self) -> str:
        """The list dispatchers block on."""
        return f"{self.prefix}:wake"

    def script_keys(self) -> list[str]:
        """The KEYS of every script call: :data:`SCRIPT_KEYS`, then each state's index."""
        fixed = [str(getattr(self, name)) for name in SCRIPT_KEYS]
        return fixed + [self.state(state.value) for state in TaskState]
