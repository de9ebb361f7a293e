"""Server-side schedules as domain types: what repeats, how its runs behave, and each run's
task, independent of gRPC and Redis.

A run of schedule ``s`` at nominal time ``t`` is an ordinary task whose idempotency key is
``run_key(s, t)``, and whose id is derived from that key and the store's partition count
(``store.keys.run_id_for`` picks one hashing to the schedule's partition), so it is the same
wherever and however often it is computed: two dispatchers, a restart or a backfill called
twice make it once.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from schedkit.model import EPOCH, TaskSpec, from_millis, to_millis
from schedkit.recurrence import DST_RULES, DstRule, Recurrence, jitter_for

#: Labels every run carries (their names are also the store's, see store/keys.py).
SCHEDULE_LABEL = "schedkit.schedule"
NOMINAL_LABEL = "schedkit.nominal"
OVERLAP_LABEL = "schedkit.overlap"
SCHEDULE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DEFAULT_CATCHUP = timedelta(minutes=1)


class Overlap(enum.StrEnum):
    """What happens when a run is due while another run of its schedule goes on."""

    SKIP = "skip"
    BUFFER_ONE = "buffer_one"
    BUFFER_ALL = "buffer_all"
    CANCEL_OTHER = "cancel_other"
    ALLOW_ALL = "allow_all"


@dataclass(frozen=True)
class ScheduleDef:
    """What a caller gives: when (recurrence, jitter, max runs), what (a task template whose
    run time and key are unused), and the policies."""

    recurrence: Recurrence
    action: TaskSpec
    jitter: timedelta = timedelta(0)
    max_runs: int = 0
    overlap: Overlap = Overlap.SKIP
    catchup_window: timedelta = DEFAULT_CATCHUP
    pause_on_failure: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    #: Runs missed inside the catch-up window become one run, at the latest missed time.
    coalesce: bool = False

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): stored, and fingerprinted for idempotent create."""
        rec, spec = self.recurrence, self.action
        value: dict[str, Any] = {
            "cron": list(rec.cron),
            "exclude": list(rec.exclude),
            "every": _ms(rec.every),
            "tz": rec.tz,
            "dst": rec.dst,
            "start": to_millis(rec.start) if rec.start else None,
            "end": to_millis(rec.end) if rec.end else None,
            "jitter": _ms(self.jitter),
            "max_runs": self.max_runs,
            "overlap": self.overlap.value,
            "catchup": _ms(self.catchup_window),
            "pause_on_failure": self.pause_on_failure,
            "labels": dict(self.labels),
            "task": {
                "task": spec.task,
                "args": spec.args,
                "kwargs": spec.kwargs,
                "queue": spec.queue,
                "priority": spec.priority,
                "labels": dict(spec.labels),
                "expires": _ms(spec.expires_after),
            },
        }
        if self.coalesce:
            # Only when set: a definition stored before coalescing existed keeps its
            # fingerprint, so creating it again stays a no-op.
            value["coalesce"] = True
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()

    @classmethod
    def from_json(cls, text: str) -> ScheduleDef:
        """The definition :meth:`to_json` wrote."""
        value = orjson.loads(text)
        task = value["task"]
        dst: DstRule = value["dst"] if value["dst"] in DST_RULES else "cron"
        return cls(
            recurrence=Recurrence(
                cron=tuple(value["cron"]),
                every=_delta(value["every"]),
                tz=value["tz"],
                dst=dst,
                start=from_millis(value["start"]) if value["start"] is not None else None,
                end=from_millis(value["end"]) if value["end"] is not None else None,
                exclude=tuple(value.get("exclude", ())),
            ),
            action=TaskSpec(
                task=task["task"],
                run_at=EPOCH,
                args=task["args"],
                kwargs=task["kwargs"],
                queue=task["queue"],
                priority=task["priority"],
                labels=task["labels"],
                expires_after=_delta(task["expires"]),
            ),
            jitter=_delta(value["jitter"]) or timedelta(0),
            max_runs=value["max_runs"],
            overlap=Overlap(value["overlap"]),
            catchup_window=_delta(value["catchup"]) or timedelta(0),
            pause_on_failure=value["pause_on_failure"],
            labels=value["labels"],
            coalesce=bool(value.get("coalesce", False)),
        )

    def fingerprint(self) -> str:
        """A short digest of the definition."""
        return hashlib.blake2b(self.to_json().encode(), digest_size=8).hexdigest()


def run_key(schedule_id: str, nominal: datetime) -> str:
    """The idempotency key of a schedule's run at a nominal time."""
    return f"schedule:{schedule_id}@{to_millis(nominal)}"


def run_spec(
    schedule_id: str,
    definition: ScheduleDef,
    nominal: datetime,
    *,
    overlap: Overlap | None = None,
) -> TaskSpec:
    """The task of one run: the action at the nominal time plus its jitter, keyed by
    :func:`run_key`, labelled with its schedule and nominal time (and an overlap policy of
    its own when a trigger or backfill chose one)."""
    labels = dict(definition.action.labels)
    labels[SCHEDULE_LABEL] = schedule_id
    labels[NOMINAL_LABEL] = nominal.astimezone(UTC).isoformat()
    if overlap is not None:
        labels[OVERLAP_LABEL] = overlap.value
    return replace(
        definition.action,
        run_at=nominal + jitter_for(schedule_id, nominal, definition.jitter),
        key=run_key(schedule_id, nominal),
        labels=labels,
    )


@dataclass(frozen=True)
class ScheduleRun:
    """A run a schedule made."""

    nominal: datetime
    task_id: str


@dataclass(frozen=True)
class ScheduleRecord:
    """A schedule as the store keeps it."""

    id: str
    definition: ScheduleDef
    paused: bool
    note: str
    run_count: int
    generation: str
    cursor: datetime
    created_at: datetime
    updated_at: datetime
    recent_runs: tuple[ScheduleRun, ...] = ()

    def next_times(self, now: datetime, count: int = 10) -> list[datetime]:
        """The next nominal times the spec gives from ``now``: those already made (before the
        cursor), then those to come, within max runs."""
        times = self.definition.recurrence.next_times(now, count)
        if not self.definition.max_runs:
            return times
        left = self.definition.max_runs - self.run_count
        made = [t for t in times if t < self.cursor]
        return made + [t for t in times if t >= self.cursor][: max(0, left)]


def _ms(delta: timedelta | None) -> int | None:
    return None if delta is None else delta // timedelta(milliseconds=1)


def _delta(ms: int | None) -> timedelta | None:
    return None if ms is None else timedelta(milliseconds=ms)
