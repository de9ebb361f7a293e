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
``{prefix}:sc:{id}``       hash   one recurring schedule (fields: :class:`ScheduleField`)
``{prefix}:scs``           zset   every schedule id (of the partition), score 0, so ids page in
                                  lexical order
``{prefix}:scdue``         zset   schedule ids by when the dispatchers materialize them next (ms)
``{prefix}:scr:{id}``      zset   a schedule's runs (task ids) by nominal time (ms): the parked
                                  ones and the latest few before now
``{prefix}:scx:{id}``      set    run ids of the schedule that a worker started, and ``b:{id}``
                                  for a run waiting its turn (the overlap guard)

Runs of a schedule carry the labels ``SCHEDULE_LABEL`` (its id) and ``NOMINAL_LABEL``, and
``OVERLAP_LABEL`` when a trigger or backfill chose its own policy (``schedkit.recurring``).

``{prefix}:meta``         hash   what the store was created with: ``partitions`` (P), written
                                  once (HSETNX); a process configured otherwise refuses to start
``{prefix:p}:lease``       string which dispatcher serves partition p now (P > 1 only)
``{prefix}:dispatchers``   zset   dispatcher ids by when their membership lapses (P > 1 only)

**Partitions.** The store is split into P partitions (``SCHEDKIT_STORE_PARTITIONS``, 1 by
default). Partition 0 keeps the names above; partition p > 0 has the same keys under its
own prefix, a hash tag of its own (``{schedkit:2}:t:{id}``, :func:`partition_prefix`). A
task lives in the partition its id hashes to (:func:`partition_of`), and so does a recurring
schedule (its id hashed alike): its hash, runs and running sets, and its entries in that
partition's ``scs`` and ``scdue``. Its runs are made in the same script as the cursor's
advance, so in the schedule's partition too: a run's id is chosen to hash there
(:func:`run_id_for`), and every lookup by id goes to one partition.

On a Redis Cluster the prefix is a hash tag (``{schedkit}:t:{id}``, see :func:`one_slot`): every
key of a partition is in one slot, which the scripts need; with P > 1 the partitions' slots
spread over the cluster's primaries.

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
import zlib
from dataclasses import dataclass

from schedkit.model import TaskState, task_id_for
from schedkit.recurring import NOMINAL_LABEL, OVERLAP_LABEL, SCHEDULE_LABEL

__all__ = [
    "EVENT_IDS",
    "MAX_PARTITIONS",
    "NOMINAL_LABEL",
    "OVERLAP_LABEL",
    "SCHEDULE_LABEL",
    "SCHEDULE_SCRIPT_KEYS",
    "SCRIPT_KEYS",
    "EventField",
    "Keys",
    "ScheduleField",
    "Stat",
    "partition_of",
    "partition_prefix",
    "run_id_for",
]

#: Most partitions a store may have: each is a due index a dispatcher polls and a stream a
#: watcher follows, so the number bounds what every round and every watch costs.
MAX_PARTITIONS = 256

#: The fixed keys of every script call, by their :class:`Keys` property (and Lua) names, in
#: the order they open ``KEYS``; the state indexes follow.
SCRIPT_KEYS = ("claims", "events", "stats", "wake", "flight")
#: The Lua names of the keys schedule scripts receive after those (``Keys.schedule_keys``).
SCHEDULE_SCRIPT_KEYS = ("sched", "scheds", "sched_due", "sched_runs", "sched_running")


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


def one_slot(prefix: str) -> str:
    """``prefix`` as a hash tag (``{schedkit}``), unless it holds one: on a Redis Cluster every
    key then falls in one slot, so each script's keys are on one node."""
    opened = prefix.find("{")
    if opened >= 0 and prefix.find("}", opened + 2) > opened:
        return prefix
    return f"{{{prefix}}}"


def partition_prefix(prefix: str, partition: int) -> str:
    """The key prefix of ``partition``: ``prefix`` itself for 0 (today's keys), else a hash
    tag of its own, ``{schedkit:2}`` (or ``app{x:2}`` for ``app{x}``), so each partition's
    keys are in one slot and different partitions in different ones."""
    if partition == 0:
        return prefix
    opened = prefix.find("{")
    closed = prefix.find("}", opened + 2) if opened >= 0 else -1
    if opened >= 0 and closed > opened:
        return f"{prefix[:closed]}:{partition}{prefix[closed:]}"
    return f"{{{prefix}:{partition}}}"


def partition_of(task_id: str, partitions: int) -> int:
    """The partition a task id hashes to: crc32, stable across processes and versions."""
    if partitions <= 1:
        return 0
    return zlib.crc32(task_id.encode()) % partitions


def run_id_for(run_key: str, partition: int, partitions: int) -> str:
    """The task id of a schedule's run with idempotency key ``run_key``, made to hash to
    ``partition`` (its schedule's), so the run is found where :func:`partition_of` says: the
    key's own id when it does (always with one partition, so ids from before partitions
    stay), else the first of ``run_key#1``, ``run_key#2``, ... whose id does. Deterministic:
    a run made again gets the same id. About P tries on average, each a short hash."""
    task_id = task_id_for(run_key)
    salt = 0
    while partition_of(task_id, partitions) != partition:
        salt += 1
        task_id = task_id_for(f"{run_key}#{salt}")
    return task_id


class ScheduleField(enum.StrEnum):
    """Fields of a schedule's hash; the schedule scripts name each ``sfield.<lower>``."""

    DEFINITION = "d"  # spec, action, policies and labels as canonical JSON
    FINGERPRINT = "h"  # of the definition: an equal re-create is a no-op
    GENERATION = "g"  # bumped by every change, so a materializer that read before it loses
    PAUSED = "ps"  # '1' while paused
    NOTE = "nt"
    CURSOR = "cur"  # ms: nominal times before it were made (or passed over on purpose)
    RUNS = "rc"  # runs made
    OVERLAP = "ov"  # the overlap policy, read by the worker's start guard
    PAUSE_ON_FAILURE = "pf"  # '1' when a FAILED run pauses the schedule
    CREATED = "c"
    UPDATED = "u"


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

    @property
    def meta(self) -> str:
        """What the store was created with (its partition count)."""
        return f"{self.prefix}:meta"

    @property
    def lease(self) -> str:
        """Which dispatcher serves this partition (P > 1)."""
        return f"{self.prefix}:lease"

    @property
    def dispatchers(self) -> str:
        """Dispatcher ids by when their membership lapses (P > 1)."""
        return f"{self.prefix}:dispatchers"

    def schedule(self, schedule_id: str) -> str:
        """The hash holding one recurring schedule."""
        return f"{self.prefix}:sc:{schedule_id}"

    @property
    def schedules(self) -> str:
        """Every schedule id, for listing."""
        return f"{self.prefix}:scs"

    @property
    def schedules_due(self) -> str:
        """Schedule ids by when they are materialized next."""
        return f"{self.prefix}:scdue"

    def schedule_runs(self, schedule_id: str) -> str:
        """A schedule's runs by nominal time."""
        return f"{self.prefix}:scr:{schedule_id}"

    def schedule_running(self, schedule_id: str) -> str:
        """The runs of a schedule a worker started, for the overlap guard."""
        return f"{self.prefix}:scx:{schedule_id}"

    def schedule_keys(self, schedule_id: str) -> list[str]:
        """The KEYS a schedule script adds after :meth:`script_keys`, in the order the
        schedule scripts name them (``sched``, ``scheds``, ``sched_due``, ``sched_runs``,
        ``sched_running``)."""
        return [
            self.schedule(schedule_id),
            self.schedules,
            self.schedules_due,
            self.schedule_runs(schedule_id),
            self.schedule_running(schedule_id),
        ]

    def script_keys(self) -> list[str]:
        """The KEYS of every script call: :data:`SCRIPT_KEYS`, then each state's index."""
        fixed = [str(getattr(self, name)) for name in SCRIPT_KEYS]
        return fixed + [self.state(state.value) for state in TaskState]
