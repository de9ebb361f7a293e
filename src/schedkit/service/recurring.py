"""The recurring schedules use case, independent of gRPC: check, create, read, change, pause,
resume, trigger, backfill and delete schedules.

Every size a caller sets is bounded before anything is stored (ids, labels, cron
expressions, notes, jitter, the catch-up window), the store keeps at most ``max_schedules``
schedules, and a backfill makes at most ``max_backfill_runs`` runs per call: a backfill of a
century of every-second runs is refused with the bound named, never sliced into millions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from schedkit.errors import (
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    excerpt,
)
from schedkit.model import EPOCH, Outcome, TaskRecord, from_millis, to_millis
from schedkit.recurrence import RecurrenceError
from schedkit.recurring import (
    SCHEDULE_ID,
    Overlap,
    ScheduleDef,
    ScheduleRecord,
    run_spec,
)
from schedkit.service.schedules import MAX_LABEL_KEY, MAX_LABEL_VALUE, MAX_LABELS, Schedules
from schedkit.store.schedules import ScheduleStore

MAX_CRON = 8
MAX_CRON_CHARS = 200
MAX_NOTE = 1000
MAX_ZONE = 64
MAX_JITTER = timedelta(hours=1)
MAX_CATCHUP = timedelta(days=365)
#: Run labels the server adds (schedule, nominal time, overlap): a template keeps room.
RUN_LABELS = 3
NEXT_TIMES = 10
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
_SLICE = 1000


@dataclass(frozen=True)
class Backfilled:
    """What a backfill did."""

    created: int
    existing: int


class Recurring:
    """Everything the schedule RPCs do, on domain types."""

    def __init__(self, schedules: Schedules) -> None:
        self.tasks = schedules
        self.settings = schedules.settings
        self.clock = schedules.clock
        self.store = ScheduleStore(schedules.store)

    # -- checks -----------------------------------------------------------------------------

    def check(self, definition: ScheduleDef, prefix: str = "schedule.") -> None:
        """InvalidArgument naming every field of ``definition`` that may not be stored."""
        violations: list[FieldViolation] = []
        rec = definition.recurrence
        spec = f"{prefix}spec."
        for name, exprs in (
            ("cron_expressions", rec.cron),
            ("exclude_cron_expressions", rec.exclude),
        ):
            if len(exprs) > MAX_CRON:
                violations.append(FieldViolation(f"{spec}{name}", f"more than {MAX_CRON}"))
            for i, expr in enumerate(exprs):
                if len(expr) > MAX_CRON_CHARS:
                    violations.append(
                        FieldViolation(f"{spec}{name}[{i}]", f"longer than {MAX_CRON_CHARS} chars")
                    )
        if len(rec.tz) > MAX_ZONE:
            violations.append(FieldViolation(f"{spec}time_zone", f"longer than {MAX_ZONE} chars"))
        if not violations:
            try:
                rec.check()
            except RecurrenceError as exc:
                violations.append(FieldViolation(f"{spec[:-1]}", str(exc)))
        if not timedelta(0) <= definition.jitter <= MAX_JITTER:
            violations.append(FieldViolation(f"{spec}jitter", "must be between 0 and 1 hour"))
        if definition.max_runs < 0:
            violations.append(FieldViolation(f"{spec}max_runs", "must be 0 (no limit) or more"))
        if not timedelta(0) <= definition.catchup_window <= MAX_CATCHUP:
            violations.append(
                FieldViolation(f"{prefix}policies.catchup_window", "must be between 0 and 365 days")
            )
        violations += _label_violations(definition.labels, f"{prefix}labels", MAX_LABELS)
        action = f"{prefix}action.task."
        violations += _label_violations(
            definition.action.labels, f"{action}labels", MAX_LABELS - RUN_LABELS
        )
        if violations:
            raise InvalidArgument.for_fields(violations)
        self.tasks.check_template(replace(definition.action, run_at=EPOCH), action)

    def _check_id(self, schedule_id: str, field: str = "id") -> None:
        if not SCHEDULE_ID.match(schedule_id):
            raise InvalidArgument.for_field(
                field,
                f"{excerpt(schedule_id)!r} is not a schedule id: 1 to 128 letters, digits, "
                "'-', '_' or '.', starting with a letter or digit",
            )

    # -- the resource -----------------------------------------------------------------------

    def create(self, schedule_id: str, definition: ScheduleDef) -> tuple[ScheduleRecord, Outcome]:
        """Store a new schedule, or return the existing one with the same definition."""
        self._check_id(schedule_id, "schedule_id")
        self.check(definition)
        now = self.clock()
        verdict = self.store.create(
            schedule_id,
            definition,
            cursor=now,
            max_schedules=self.settings.max_schedules,
            now=now,
        )
        if verdict == "conflict":
            raise AlreadyExists(
                f"schedule {schedule_id} exists with other content; update it, or use a new id",
                violations=(FieldViolation("schedule_id", "already names another schedule"),),
            )
        if verdict == "full":
            raise ResourceExhausted(
                f"the store keeps at most {self.settings.max_schedules:,} schedules "
                "(SCHEDKIT_MAX_SCHEDULES); delete some first"
            )
        outcome = Outcome.CREATED if verdict == "created" else Outcome.EXISTING
        return self.store.get(schedule_id, now=now), outcome

    def get(self, schedule_id: str) -> ScheduleRecord:
        """One schedule, or NotFound."""
        self._check_id(schedule_id)
        return self.store.get(schedule_id, now=self.clock())

    def next_times(self, record: ScheduleRecord) -> list[datetime]:
        """The next nominal times of a schedule (paused or not)."""
        return record.next_times(self.clock(), NEXT_TIMES)

    def page(
        self, labels: Mapping[str, str], *, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[ScheduleRecord], str]:
        """A page of schedules by id carrying ``labels``, and the next page's token (the
        last id looked at); scans at most eight slices per call."""
        if not 0 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument.for_field(
                "page_size", f"must be between 0 (default {DEFAULT_PAGE_SIZE}) and {MAX_PAGE_SIZE}"
            )
        if len(labels) > MAX_LABELS:
            raise InvalidArgument.for_field("labels", f"more than {MAX_LABELS} labels")
        if page_token and not SCHEDULE_ID.match(page_token):
            raise InvalidArgument.for_field("page_token", "not a token this server gave")
        size = page_size or DEFAULT_PAGE_SIZE
        found: list[ScheduleRecord] = []
        after = page_token
        now = self.clock()
        for _ in range(8):
            ids = self.store.page_ids(after, size - len(found))
            if not ids:
                return found, ""
            for record in self.store.get_many(ids, now=now):
                if record is not None and all(
                    record.definition.labels.get(k) == v for k, v in labels.items()
                ):
                    found.append(record)
            after = ids[-1]
            if len(found) >= size:
                break
        more = self.store.page_ids(after, 1)
        return found, after if more else ""

    def update(self, schedule_id: str, definition: ScheduleDef) -> ScheduleRecord:
        """Replace a schedule's definition; parked runs are made again from it."""
        self._check_id(schedule_id, "schedule.id")
        self.check(definition)
        if self.store.update(schedule_id, definition, now=self.clock()) < 0:
            raise _missing(schedule_id)
        return self.get(schedule_id)

    def pause(self, schedule_id: str, note: str = "") -> tuple[ScheduleRecord, int]:
        """Pause; parked runs not yet handed off are removed. Returns how many."""
        self._check_id(schedule_id)
        _check_note(note)
        removed = self.store.pause(schedule_id, note, now=self.clock())
        if removed < 0:
            raise _missing(schedule_id)
        return self.get(schedule_id), removed

    def resume(self, schedule_id: str, note: str = "") -> ScheduleRecord:
        """Resume from now: the paused period makes no runs."""
        self._check_id(schedule_id)
        _check_note(note)
        if self.store.resume(schedule_id, note, now=self.clock()) < 0:
            raise _missing(schedule_id)
        return self.get(schedule_id)

    def delete(self, schedule_id: str) -> int:
        """Forget a schedule; returns how many parked runs were removed."""
        self._check_id(schedule_id)
        removed = self.store.delete(schedule_id, now=self.clock())
        if removed < 0:
            raise _missing(schedule_id)
        return removed

    # -- runs on demand ---------------------------------------------------------------------

    def trigger(self, schedule_id: str, overlap: Overlap | None = None) -> TaskRecord:
        """One run now (nominal time: now), under ``overlap`` or the schedule's policy."""
        record = self.get(schedule_id)
        now = self.clock()
        nominal = from_millis(to_millis(now))
        spec = run_spec(record.id, record.definition, nominal, overlap=overlap)
        spec = replace(spec, run_at=nominal)  # now means now: no jitter
        outcome = self.store.store_runs(
            record,
            [(nominal, spec)],
            window_seconds=self.settings.handoff_window,
            refuse_paused=False,
            now=now,
        )
        if outcome.verdict == "missing":
            raise _missing(schedule_id)
        return self.tasks.store.get(outcome.results[0].id)

    def backfill(
        self,
        schedule_id: str,
        start: datetime,
        end: datetime,
        overlap: Overlap | None = None,
    ) -> Backfilled:
        """The runs the spec gives in ``[start, end)``, each made once however often asked."""
        if end <= start:
            raise InvalidArgument.for_field("end_time", "must be after start_time")
        record = self.get(schedule_id)
        bound = self.settings.max_backfill_runs
        times = record.definition.recurrence.times(start, end, bound + 1)
        if len(times) > bound:
            raise InvalidArgument.for_field(
                "end_time",
                f"the range holds more than {bound:,} runs (SCHEDKIT_MAX_BACKFILL_RUNS); "
                f"end it at {times[bound - 1].isoformat()} or earlier and backfill the rest "
                "in further calls",
            )
        created = existing = 0
        for first in range(0, len(times), _SLICE):
            part = times[first : first + _SLICE]
            runs = [(t, run_spec(record.id, record.definition, t, overlap=overlap)) for t in part]
            outcome = self.store.store_runs(
                record,
                runs,
                window_seconds=self.settings.handoff_window,
                refuse_paused=False,
                now=self.clock(),
            )
            if outcome.verdict == "missing":
                raise _missing(schedule_id)
            created += sum(1 for r in outcome.results if r.outcome is Outcome.CREATED)
            existing += sum(1 for r in outcome.results if r.outcome is not Outcome.CREATED)
        return Backfilled(created, existing)


def _missing(schedule_id: str) -> NotFound:
    return NotFound(f"no schedule with id {excerpt(schedule_id)!r}")


def _check_note(note: str) -> None:
    if len(note) > MAX_NOTE:
        raise InvalidArgument.for_field("note", f"longer than {MAX_NOTE} chars")


def _label_violations(labels: Mapping[str, str], field: str, most: int) -> list[FieldViolation]:
    if len(labels) > most:
        return [FieldViolation(field, f"more than {most} labels")]
    return [
        FieldViolation(
            f"{field}[{excerpt(name)!r}]",
            f"label names take 1 to {MAX_LABEL_KEY} chars, values up to {MAX_LABEL_VALUE}",
        )
        for name, value in labels.items()
        if not name or len(name) > MAX_LABEL_KEY or len(value) > MAX_LABEL_VALUE
    ]
