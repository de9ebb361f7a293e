"""Recurring schedules in the store: their records, the due index the dispatchers
materialize from, their runs, and the overlap guard a worker's start goes through.

Each change is one Lua script (``sched_*.lua`` after ``sched_prelude.lua``), so a schedule,
its indexes and its parked runs change together. A schedule lives in the store partition its
id hashes to, and its runs with it (their ids are chosen to hash there, ``run_id_for``): every
script of a schedule works in that one partition, one slot on a cluster.

Making runs is ``sched_runs.lua`` followed by ``schedule.lua``: the guard checks the
schedule's generation and cursor and advances them in the same script that stores the runs,
so a materializer that read before a pause, an update or another materializer stores nothing.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from schedkit.errors import NotFound, excerpt
from schedkit.model import ScheduleResult, TaskSpec, from_millis, to_millis, utc_now
from schedkit.recurring import ScheduleDef, ScheduleRecord, ScheduleRun
from schedkit.store.codec import schedule_payload, schedule_results
from schedkit.store.connect import store_errors
from schedkit.store.keys import Keys, ScheduleField, run_id_for
from schedkit.store.record import NewTasks, encode_template, template_row
from schedkit.store.scripts import script_argv, script_text
from schedkit.store.store import Store

log = logging.getLogger(__name__)

#: The Lua files of schedules, besides the task scripts (store.SCRIPTS) they build on.
LUA_FILES = (
    "sched_prelude",
    "sched_create",
    "sched_update",
    "sched_pause",
    "sched_resume",
    "sched_delete",
    "sched_runs",
    "sched_due",
    "run_guard",
)
#: How many runs before now a schedule's runs index keeps (GetSchedule's recent runs).
RECENT_RUNS = 10
_SCHED = ("sched_prelude",)
_SCRIPTS: dict[str, tuple[str, ...]] = {
    "create": ("sched_create",),
    "update": ("sched_update",),
    "pause": ("sched_pause",),
    "resume": ("sched_resume",),
    "delete": ("sched_delete",),
    "runs": ("sched_runs", "schedule"),
    "take_due": ("sched_due",),
}


@dataclass(frozen=True)
class RunsOutcome:
    """What storing a schedule's runs did: ``verdict`` 'made', 'stale', 'paused' or
    'missing'; per run results when made."""

    verdict: str
    results: list[ScheduleResult]


@dataclass(frozen=True)
class RunsPlan:
    """Runs (nominal time, task) to store for ``record``; with ``advance`` (new cursor, next
    due or None when done) only if the schedule is still at the record's generation and
    cursor, moving them on in the same script."""

    record: ScheduleRecord
    runs: Sequence[tuple[datetime, TaskSpec]]
    advance: tuple[datetime, datetime | None] | None = None
    refuse_paused: bool = True

    def guard(self, batch: NewTasks) -> list[Any]:
        """sched_runs.lua's arguments after schedule.lua's."""
        nominals = [nominal for nominal, _ in self.runs]
        pairs = [(to_millis(t), row.id) for t, row in zip(nominals, batch.rows, strict=True)]
        record, advance = self.record, self.advance
        if advance is None:
            generation, cursor, new_cursor, due = "", "", "", ""
        else:
            generation = record.generation
            cursor = str(to_millis(record.cursor))
            new_cursor = str(to_millis(advance[0]))
            due = "" if advance[1] is None else str(to_millis(advance[1]))
        paused = "1" if self.refuse_paused else ""
        return [
            generation, cursor, new_cursor, due, _json_pairs(pairs), RECENT_RUNS, paused,
            record.id,
        ]  # fmt: skip


class ScheduleStore:
    """Schedules on top of a :class:`Store` (its Redis, prefix and keys)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        client = store.redis
        self._scripts = {
            name: client.register_script(script_text(*_SCHED, *parts))
            for name, parts in _SCRIPTS.items()
        }
        self._start = client.register_script(script_text("run_guard", "start"))

    def keys_of(self, schedule_id: str) -> Keys:
        """The keys of the partition ``schedule_id`` (and its runs) lives in."""
        return self.store.parts[self.store.partition_of(schedule_id)]

    def _call(self, partition: int, schedule_id: str) -> tuple[list[str], str]:
        """A schedule script's KEYS in ``partition`` and the task key prefix its ARGV opens
        with."""
        keys = self.store.parts[partition]
        return self.store.part_script_keys[partition] + keys.schedule_keys(schedule_id), (
            keys.task_prefix
        )

    def _run(self, name: str, schedule_id: str, *args: Any, now: datetime | None = None) -> Any:
        keys, task_prefix = self._call(self.store.partition_of(schedule_id), schedule_id)
        argv = script_argv(task_prefix, self.store.history, now, *args)
        with store_errors():
            return self._scripts[name](keys=keys, args=argv)

    def _pipelined(self, name: str, calls: Sequence[tuple[int, list[str], list[Any]]]) -> list[Any]:
        """Script ``name`` once per (partition, KEYS, ARGV): one pipeline per server the
        partitions are on (one on a single Redis); replies in call order. One call goes
        alone: a pipeline of scripts first asks SCRIPT EXISTS, a round trip more."""
        script = self._scripts[name]
        if len(calls) == 1:
            _, keys, argv = calls[0]
            with store_errors():
                return [script(keys=keys, args=argv)]
        replies: list[Any] = [None] * len(calls)
        for client, members in self.store.by_server([partition for partition, _, _ in calls]):
            with store_errors(), self.store.slot_moves():
                pipe = client.pipeline(transaction=False)
                for n in members:
                    _, keys, argv = calls[n]
                    script(keys=keys, args=argv, client=pipe)
                for n, reply in zip(members, pipe.execute(), strict=True):
                    replies[n] = reply
        return replies

    # -- changes ----------------------------------------------------------------------------

    def create(
        self,
        schedule_id: str,
        definition: ScheduleDef,
        *,
        cursor: datetime,
        max_schedules: int,
        now: datetime | None = None,
    ) -> str:
        """'created', 'existing' (same definition), 'conflict' or 'full'."""
        # The script counts its own partition's schedules; the others' are counted first, so
        # only creates racing in other partitions can pass the bound, by one each.
        room = max_schedules
        if self.store.partitions > 1:
            home = self.store.partition_of(schedule_id)
            room -= sum(size for part, size in enumerate(self._counts()) if part != home)
        return str(
            self._run(
                "create",
                schedule_id,
                schedule_id,
                *_definition_argv(definition),
                to_millis(cursor),
                room,
                now=now,
            )
        )

    def update(self, schedule_id: str, definition: ScheduleDef, now: datetime | None = None) -> int:
        """Replace the definition; parked runs are removed and made again. -1 if missing."""
        return int(
            self._run(
                "update",
                schedule_id,
                schedule_id,
                *_definition_argv(definition),
                now=now,
            )
        )

    def pause(
        self, schedule_id: str, note: str, *, on_failure: bool = False, now: datetime | None = None
    ) -> int:
        """Pause and remove parked runs: how many; -1 missing; -2 (``on_failure``) when the
        schedule does not pause on failure."""
        flag = "1" if on_failure else ""
        return int(self._run("pause", schedule_id, schedule_id, note, flag, now=now))

    def resume(self, schedule_id: str, note: str, now: datetime | None = None) -> int:
        """1 resumed from now, 0 was not paused, -1 missing."""
        return int(self._run("resume", schedule_id, schedule_id, note, now=now))

    def delete(self, schedule_id: str, now: datetime | None = None) -> int:
        """Forget the schedule and remove its parked runs: how many; -1 if missing."""
        return int(self._run("delete", schedule_id, schedule_id, now=now))

    def store_runs(
        self,
        record: ScheduleRecord,
        runs: Sequence[tuple[datetime, TaskSpec]],
        *,
        window_seconds: float,
        advance: tuple[datetime, datetime | None] | None = None,
        refuse_paused: bool = True,
        now: datetime | None = None,
    ) -> RunsOutcome:
        """Store runs (nominal time, task) of ``record``. With ``advance`` (new cursor, next
        due or None when done) only if the schedule is still at the record's generation and
        cursor, moving them on in the same script."""
        plan = RunsPlan(record, runs, advance, refuse_paused)
        return self.store_many([plan], window_seconds=window_seconds, now=now)[0]

    def store_many(
        self, plans: Sequence[RunsPlan], *, window_seconds: float, now: datetime | None = None
    ) -> list[RunsOutcome]:
        """Several schedules' runs in one round trip (one script each, pipelined)."""
        if not plans:
            return []
        now = now or utc_now()
        calls = []
        batches = []
        for plan in plans:
            partition = self.store.partition_of(plan.record.id)
            batch = _batch(plan.runs, now, partition, self.store.partitions)
            keys, task_prefix = self._call(partition, plan.record.id)
            argv = script_argv(
                task_prefix,
                self.store.history,
                now,
                int(window_seconds * 1000),
                schedule_payload(batch),
                *plan.guard(batch),
            )
            batches.append(batch)
            calls.append((partition, keys, argv))
        replies = self._pipelined("runs", calls)
        outcomes = []
        for batch, reply in zip(batches, replies, strict=True):
            if reply and isinstance(reply[0], str) and not reply[0].isdigit():
                outcomes.append(RunsOutcome(reply[0], []))
            else:
                results = schedule_results(batch.rows, reply) if batch.rows else []
                outcomes.append(RunsOutcome("made", results))
        return outcomes

    # -- reading ----------------------------------------------------------------------------

    def take_due(
        self,
        now: datetime,
        limit: int,
        lease_seconds: float,
        partitions: Sequence[int] | None = None,
    ) -> list[str]:
        """Ids of schedules due by ``now`` in ``partitions`` (None: all), each passed by
        other materializers for ``lease_seconds`` (or until its runs are made). Each
        partition gives its share of ``limit``, so a backlog in one does not starve the
        others."""
        parts = self.store.all_partitions(partitions)
        if not parts:
            return []
        share = -(-limit // len(parts))
        calls = []
        for partition in parts:
            keys, task_prefix = self._call(partition, "")
            argv = script_argv(
                task_prefix, self.store.history, now, share, int(lease_seconds * 1000)
            )
            calls.append((partition, keys, argv))
        return [str(i) for ids in self._pipelined("take_due", calls) for i in ids]

    def due(self, now: datetime, limit: int, partitions: Sequence[int] | None = None) -> list[str]:
        """Ids of schedules whose runs should be made by ``now`` in ``partitions`` (None:
        all), earliest first."""
        with store_errors():
            pipe = self.store.redis.pipeline(transaction=False)
            for partition in self.store.all_partitions(partitions):
                pipe.zrangebyscore(
                    self.store.parts[partition].schedules_due,
                    "-inf",
                    to_millis(now),
                    start=0,
                    num=limit,
                    withscores=True,
                )
            found = [(score, str(i)) for got in pipe.execute() for i, score in got]
        return [i for _, i in sorted(found)[:limit]]

    def get(self, schedule_id: str, now: datetime | None = None) -> ScheduleRecord:
        """One schedule with its recent runs, or NotFound."""
        record = self.get_many([schedule_id], now=now)[0]
        if record is None:
            raise NotFound(f"no schedule with id {excerpt(schedule_id)!r}")
        return record

    def get_many(
        self, schedule_ids: Sequence[str], now: datetime | None = None, *, recent: bool = True
    ) -> list[ScheduleRecord | None]:
        """Schedules by id in one round trip; None where there is none. Without ``recent``
        their recent runs are not read (the materializer has no use for them)."""
        now_ms = to_millis(now or utc_now())
        with store_errors():
            pipe = self.store.redis.pipeline(transaction=False)
            for sid in schedule_ids:
                keys = self.keys_of(sid)
                pipe.hgetall(keys.schedule(sid))
                if recent:
                    pipe.zrevrangebyscore(
                        keys.schedule_runs(sid),
                        now_ms,
                        "-inf",
                        start=0,
                        num=RECENT_RUNS,
                        withscores=True,
                    )
            replies = pipe.execute()
        per = 2 if recent else 1
        out: list[ScheduleRecord | None] = []
        for i, sid in enumerate(schedule_ids):
            raw, runs = replies[per * i], replies[per * i + 1] if recent else []
            try:
                out.append(_decode(sid, raw, runs) if raw else None)
            except (KeyError, ValueError, TypeError):
                # A record this version cannot read: reported missing, never poisoning a batch.
                log.exception("schedule %s: unreadable record", sid)
                out.append(None)
        return out

    def page_ids(self, after: str, limit: int) -> list[str]:
        """Up to ``limit`` schedule ids after ``after``, in lexical order: each partition's
        first ``limit`` merged (ids are ASCII, so byte order and str order agree)."""
        start = f"({after}" if after else "-"
        with store_errors():
            pipe = self.store.redis.pipeline(transaction=False)
            for keys in self.store.parts:
                pipe.zrangebylex(keys.schedules, start, "+", start=0, num=limit)
            pages = [[str(i) for i in ids] for ids in pipe.execute()]
        merged: Iterator[str] = heapq.merge(*pages)
        return list(itertools.islice(merged, limit))

    def _counts(self) -> list[int]:
        """How many schedules each partition keeps."""
        with store_errors():
            pipe = self.store.redis.pipeline(transaction=False)
            for keys in self.store.parts:
                pipe.zcard(keys.schedules)
            return [int(size) for size in pipe.execute()]

    def count(self) -> int:
        """How many schedules the store keeps, all partitions together."""
        return sum(self._counts())

    def parked_runs(self, schedule_id: str) -> list[str]:
        """Ids of the schedule's runs in its runs index (parked ones and the latest)."""
        key = self.keys_of(schedule_id).schedule_runs(schedule_id)
        with store_errors():
            return [str(i) for i in self.store.redis.zrange(key, 0, -1)]

    # -- the worker's side ------------------------------------------------------------------

    def start_run(self, task_id: str, *, buffer_ms: int, now: datetime | None = None) -> str:
        """The worker's start through the overlap guard: start.lua's verdicts, or
        'overlap:skipped', 'overlap:buffered', 'overlap:cancel <ids>'.

        In the partition the run's id hashes to, which holds its schedule too: a task that
        is no schedule's run is started there like any other."""
        partition = self.store.partition_of(task_id)
        keys = self.store.parts[partition]
        argv = script_argv(
            keys.task_prefix,
            self.store.history,
            now,
            task_id,
            keys.schedule(""),
            keys.schedule_running(""),
            buffer_ms,
        )
        # Waited for like start.lua alone (see Store.start).
        script_keys = self.store.part_script_keys[partition]
        return cast(
            str,
            self.store.acknowledged(
                self._start, script_keys, argv, partition=partition, what="start"
            ),
        )


def _definition_argv(definition: ScheduleDef) -> tuple[str, str, str, str]:
    """What create and update store of a definition: its JSON, fingerprint, overlap policy
    (read by the start guard) and pause-on-failure flag."""
    return (
        definition.to_json(),
        definition.fingerprint(),
        definition.overlap.value,
        "1" if definition.pause_on_failure else "",
    )


def _batch(
    runs: Sequence[tuple[datetime, TaskSpec]], now: datetime, partition: int, partitions: int
) -> NewTasks:
    """The runs as new tasks of ``partition`` (their schedule's): ids that hash there."""
    templates: list[list[str]] = []
    rows = []
    for number, (_, spec) in enumerate(runs):
        template = encode_template(spec)
        templates.append(template.fields)
        task_id = run_id_for(spec.key, partition, partitions)
        rows.append(template_row(template, task_id, spec.key, to_millis(spec.run_at), number))
    return NewTasks(templates, rows, to_millis(now))


def _json_pairs(pairs: list[tuple[int, str]]) -> str:
    return "[" + ",".join(f'[{ms},"{task_id}"]' for ms, task_id in pairs) + "]"


def _decode(schedule_id: str, raw: dict[str, str], recent: list[Any]) -> ScheduleRecord:
    F = ScheduleField
    return ScheduleRecord(
        id=schedule_id,
        definition=ScheduleDef.from_json(raw[F.DEFINITION]),
        paused=bool(raw.get(F.PAUSED)),
        note=raw.get(F.NOTE, ""),
        run_count=int(raw.get(F.RUNS, "0")),
        generation=raw[F.GENERATION],
        cursor=from_millis(int(raw[F.CURSOR])),
        created_at=from_millis(int(raw[F.CREATED])),
        updated_at=from_millis(int(raw[F.UPDATED])),
        recent_runs=tuple(ScheduleRun(from_millis(int(score)), str(tid)) for tid, score in recent),
    )
