"""The schedules use case: validate, store, read, cancel and watch tasks.

Independent of gRPC: the servicer converts messages and calls this; tests and embedding code
can call it directly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from celery import Celery

from schedkit.broker import Broker
from schedkit.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from schedkit.model import (
    Outcome,
    ScheduleResult,
    TaskRecord,
    TaskSpec,
    TaskState,
    from_millis,
    task_id_for,
    to_millis,
    utc_now,
)
from schedkit.record import Row, dumps, encode_row
from schedkit.registry import TaskRegistry, TaskType
from schedkit.settings import Settings
from schedkit.store import StateChange, Store, TaskQuery

log = logging.getLogger(__name__)

MAX_LABELS = 64
MAX_LABEL_KEY = 63
MAX_LABEL_VALUE = 256
MAX_KEY = 512
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


class Schedules:
    """Everything ScheduleService does, on domain types."""

    def __init__(
        self,
        store: Store,
        registry: TaskRegistry,
        settings: Settings,
        *,
        broker: Broker | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.broker = broker
        self.store = store
        self.registry = registry
        self.settings = settings
        self.clock = clock

    @property
    def app(self) -> Celery:
        """The Celery app whose tasks are scheduled."""
        return self.registry.app

    def check(self, spec: TaskSpec, *, now: datetime, field_prefix: str = "spec.") -> None:
        """Raise InvalidArgument naming the field unless ``spec`` may be scheduled."""
        self._check(
            spec,
            now_ms=to_millis(now),
            args_json=dumps(spec.args) if spec.args else "",
            kwargs_json=dumps(spec.kwargs) if spec.kwargs else "",
            field_prefix=field_prefix,
        )

    def _check(
        self,
        spec: TaskSpec,
        *,
        now_ms: int,
        args_json: str,
        kwargs_json: str,
        field_prefix: str,
    ) -> None:
        self.registry.check(spec.task, spec.args, spec.kwargs, field_prefix=field_prefix)
        run_ms = to_millis(spec.run_at)
        tolerance_ms = int(self.settings.past_tolerance * 1000)
        size = len(args_json or "[]") + len(kwargs_json or "{}")
        if (
            run_ms >= now_ms - tolerance_ms
            and size <= self.settings.max_args_bytes
            and len(spec.key) <= MAX_KEY
            and _labels_fit(spec.labels)
        ):
            return  # the common case, decided without building anything
        violations: list[FieldViolation] = []
        if run_ms < now_ms - tolerance_ms:
            ago = timedelta(milliseconds=now_ms - run_ms)
            violations.append(
                FieldViolation(
                    f"{field_prefix}run_time",
                    f"{spec.run_at.isoformat()} is {_human(ago)} in the past; times up to "
                    f"{_human(timedelta(milliseconds=tolerance_ms))} late run at once, older "
                    "ones are refused (SCHEDKIT_PAST_TOLERANCE)",
                )
            )
        if size > self.settings.max_args_bytes:
            violations.append(
                FieldViolation(
                    f"{field_prefix}args",
                    f"args and kwargs take {size} bytes as JSON, more than the limit of "
                    f"{self.settings.max_args_bytes} (SCHEDKIT_MAX_ARGS_BYTES); pass a reference "
                    "to the data instead",
                )
            )
        if len(spec.key) > MAX_KEY:
            violations.append(
                FieldViolation(f"{field_prefix}idempotency_key", f"longer than {MAX_KEY} chars")
            )
        if len(spec.labels) > MAX_LABELS:
            violations.append(
                FieldViolation(f"{field_prefix}labels", f"more than {MAX_LABELS} labels")
            )
        for name, value in spec.labels.items():
            if not name or len(name) > MAX_LABEL_KEY or len(value) > MAX_LABEL_VALUE:
                violations.append(
                    FieldViolation(
                        f"{field_prefix}labels[{name!r}]",
                        f"label names take 1 to {MAX_LABEL_KEY} chars, values up to "
                        f"{MAX_LABEL_VALUE}",
                    )
                )
        if violations:
            raise InvalidArgument(
                "; ".join(f"{v.field}: {v.description}" for v in violations),
                violations=tuple(violations),
            )

    def schedule(self, spec: TaskSpec) -> ScheduleResult:
        """Schedule one task; raise the error if it is refused."""
        result = self.schedule_batch([spec])[0]
        if result.error is not None:
            raise result.error
        return result

    def schedule_and_get(self, spec: TaskSpec) -> tuple[TaskRecord, Outcome]:
        """Schedule one task and return the stored task; raise the error if it is refused.

        A created task is known without reading it back (one store round trip, not two):
        its record is the spec at the store's millisecond precision, SCHEDULED, created now.
        """
        now = self.clock()
        result = self.schedule_batch([spec], now=now)[0]
        if result.error is not None:
            raise result.error
        if result.outcome is not Outcome.CREATED:
            return self.store.get(result.id), result.outcome
        stored = replace(
            spec,
            run_at=from_millis(to_millis(spec.run_at)),
            expires_after=None
            if spec.expires_after is None
            else timedelta(milliseconds=int(spec.expires_after.total_seconds() * 1000)),
        )
        record = TaskRecord(
            result.id, stored, TaskState.SCHEDULED, created_at=from_millis(to_millis(now))
        )
        return record, result.outcome

    def schedule_batch(
        self,
        specs: Sequence[TaskSpec | Exception],
        *,
        field_prefix: str = "spec.",
        now: datetime | None = None,
    ) -> list[ScheduleResult]:
        """Schedule many in one store round trip; an Exception item stays a rejection in place.

        ``field_prefix`` may hold ``{}`` for the item's index, as in ``specs[{}].``. Each
        task's JSON is made once here and used for the checks, the fingerprint and the store.
        """
        now = now or self.clock()
        now_ms = to_millis(now)
        results: list[ScheduleResult | None] = []
        accepted: list[tuple[int, Row]] = []
        numbered = "{}" in field_prefix
        for index, item in enumerate(specs):
            if isinstance(item, Exception):
                results.append(ScheduleResult("", Outcome.REJECTED, item))
                continue
            args_json = dumps(item.args) if item.args else ""
            kwargs_json = dumps(item.kwargs) if item.kwargs else ""
            try:
                self._check(
                    item,
                    now_ms=now_ms,
                    args_json=args_json,
                    kwargs_json=kwargs_json,
                    field_prefix=field_prefix.format(index) if numbered else field_prefix,
                )
            except InvalidArgument as exc:
                results.append(ScheduleResult("", Outcome.REJECTED, exc))
                continue
            results.append(None)
            row = encode_row(task_id_for(item.key), item, now_ms, args_json, kwargs_json)
            accepted.append((index, row))
        stored = self.store.schedule_rows(
            [row for _, row in accepted], window_seconds=self.settings.handoff_window, now=now
        )
        created = [r.id for r in stored if r.outcome is Outcome.CREATED]
        if created and log.isEnabledFor(logging.DEBUG):
            for task_id in created:
                log.debug("scheduled", extra={"task_id": task_id})
        for (index, _), result in zip(accepted, stored, strict=True):
            if isinstance(result.error, AlreadyExists):
                field = field_prefix.format(index) + "idempotency_key"
                violation = FieldViolation(field, result.error.message)
                result = replace(
                    result, error=AlreadyExists(result.error.message, violations=(violation,))
                )
            results[index] = result
        return [r for r in results if r is not None]

    def get(self, task_id: str) -> TaskRecord:
        """One task, or NotFound."""
        if not task_id:
            raise InvalidArgument.for_field("id", "required: a task id")
        return self.store.get(task_id)

    def page(
        self, query: TaskQuery, *, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[TaskRecord], str]:
        """A page of tasks by run time and the next page's token."""
        if page_size < 0 or page_size > MAX_PAGE_SIZE:
            raise InvalidArgument.for_field(
                "page_size", f"must be between 0 (default {DEFAULT_PAGE_SIZE}) and {MAX_PAGE_SIZE}"
            )
        if query.run_after and query.run_before and query.run_before <= query.run_after:
            raise InvalidArgument.for_field("filter.run_before", "must be after filter.run_after")
        return self.store.page(
            query, page_size=page_size or DEFAULT_PAGE_SIZE, page_token=page_token
        )

    def cancel(self, task_id: str) -> TaskRecord:
        """Cancel a task that has not started; a handed-off one is also revoked in Celery."""
        if not task_id:
            raise InvalidArgument.for_field("id", "required: a task id")
        verdict, previous = self.store.cancel(task_id, now=self.clock())
        if verdict == "missing":
            raise NotFound(f"no task with id {task_id!r}")
        if verdict == "refused":
            assert previous is not None
            raise FailedPrecondition(
                f"task {task_id} is {previous.value}: only SCHEDULED, QUEUED or RETRYING tasks "
                "can be cancelled"
            )
        if verdict == "cancelled":
            log.info("cancelled", extra={"task_id": task_id, "previous": str(previous)})
        if verdict == "cancelled" and previous is not None and previous.value != "SCHEDULED":
            self._revoke(task_id)
        return self.store.get(task_id)

    def _revoke(self, task_id: str) -> None:
        # The worker hook refuses a cancelled task anyway; revoke only spares the worker a start.
        try:
            (self.broker or Broker(self.app)).revoke(task_id)
        except Exception:  # the cancel is already durable; a broker hiccup must not undo it
            log.warning(
                "revoke of %s failed; the worker hook will refuse it",
                task_id,
                exc_info=True,
                extra={"task_id": task_id},
            )

    def watch(
        self, query: TaskQuery, *, is_active: Callable[[], bool], block_ms: int = 1000
    ) -> Iterator[tuple[TaskRecord, StateChange]]:
        """(task, change) for state changes from the moment of this call, while ``is_active()``.

        The starting point is taken now, not on first iteration, so a caller can signal
        "watching" before anything else happens.
        """
        return self._follow(self.store.latest_event(), query, is_active, block_ms)

    def _follow(
        self, cursor: str, query: TaskQuery, is_active: Callable[[], bool], block_ms: int
    ) -> Iterator[tuple[TaskRecord, StateChange]]:
        while is_active():
            changes = self.store.events(cursor, block_ms=block_ms)
            if not changes:
                continue
            cursor = changes[-1].cursor
            wanted = [
                c
                for c in changes
                if (not query.states or c.state in query.states)
                and (not query.ids or c.task_id in query.ids)
            ]
            records = self.store.get_many([c.task_id for c in wanted])
            for change, record in zip(wanted, records, strict=True):
                if record is not None and _matches_besides_state(query, record):
                    # Changes read together share one later record: report each change's state,
                    # or a STARTED read with its SUCCEEDED would be sent as SUCCEEDED twice.
                    yield replace(record, state=change.state), change

    def task_types(self) -> list[TaskType]:
        """The tasks that may be scheduled."""
        return self.registry.task_types()


def _matches_besides_state(query: TaskQuery, record: TaskRecord) -> bool:
    # The record may already be past the change being reported; the change's state was checked.
    return TaskQuery(
        task=query.task,
        labels=query.labels,
        run_after=query.run_after,
        run_before=query.run_before,
    ).matches(record)


def _labels_fit(labels: Mapping[str, str]) -> bool:
    return len(labels) <= MAX_LABELS and all(
        name and len(name) <= MAX_LABEL_KEY and len(value) <= MAX_LABEL_VALUE
        for name, value in labels.items()
    )


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds}s"
