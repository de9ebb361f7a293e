"""The schedules use case: validate, store, read and cancel tasks, and pick the state
changes a watch reports (the server's change feed, service/watch.py, follows the stream).

Independent of gRPC: the servicer converts messages and calls this; tests and embedding code
can call it directly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from celery import Celery

from schedkit.dispatch.broker import Broker
from schedkit.dispatch.registry import TaskRegistry
from schedkit.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    excerpt,
)
from schedkit.model import (
    MAX_MICROS,
    MAX_RUN_MICROS,
    MIN_MICROS,
    RUN_TIME_TOO_LATE,
    Outcome,
    ScheduleResult,
    TaskRecord,
    TaskRows,
    TaskSpec,
    TaskState,
    TaskType,
    from_micros,
    from_millis,
    millis_of_micros,
    task_id_for,
    to_millis,
    utc_now,
)
from schedkit.settings import Settings
from schedkit.store.codec import StateChange
from schedkit.store.query import TaskQuery
from schedkit.store.record import NewTasks, Row, Template, dumps, encode_template, template_row
from schedkit.store.store import Store
from schedkit.wire.cache import ENTRY_OVERHEAD, ByteBoundedLRU

log = logging.getLogger(__name__)

MAX_LABELS = 64
MAX_LABEL_KEY = 63
MAX_LABEL_VALUE = 256
MAX_KEY = 512
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
# The budget of checked and encoded templates kept by identity (see Schedules._prepare).
TEMPLATE_ENCODINGS_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class BatchFields:
    """How errors name a batch row's fields; ``{}`` takes the template's or the row's index."""

    template: str
    run_time: str
    key: str

    @classmethod
    def of_prefix(cls, prefix: str) -> BatchFields:
        """Fields of specs, each its own template: ``specs[{}].run_time`` and so on."""
        return cls(prefix, f"{prefix}run_time", f"{prefix}idempotency_key")


@dataclass(frozen=True)
class PreparedBatch:
    """A batch checked and encoded, not yet stored: refused rows' results are in place, the
    accepted rows wait for the store."""

    now: datetime
    fields: BatchFields
    results: list[ScheduleResult | None]
    accepted: list[int]  # the places of new.rows in the batch
    new: NewTasks


# The field names of a TaskColumns batch.
COLUMN_FIELDS = BatchFields(
    "columns.templates[{}].", "columns.run_time_micros[{}]", "columns.idempotency_keys[{}]"
)


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
        self._templates: ByteBoundedLRU[int, tuple[TaskSpec, Template]] = ByteBoundedLRU(
            TEMPLATE_ENCODINGS_BYTES
        )

    @property
    def app(self) -> Celery:
        """The Celery app whose tasks are scheduled."""
        return self.registry.app

    def prepare_one(self, spec: TaskSpec, now: datetime) -> PreparedBatch:
        """A batch of one task, checked and encoded: the first half of a ScheduleTask."""
        return self.prepare_rows(
            TaskRows.of_specs([spec]), fields=BatchFields.of_prefix("spec."), now=now
        )

    def prepare_rows(
        self,
        rows: TaskRows,
        *,
        fields: BatchFields = COLUMN_FIELDS,
        now: datetime | None = None,
    ) -> PreparedBatch:
        """Check and encode a batch; nothing is stored until :meth:`store_prepared`.

        Each template is checked and encoded once, on first use; a row then costs its run-time
        and key checks, its id and its fingerprint. Errors name fields through ``fields``.
        Split from storing so a stream can prepare one batch while the store takes the last.
        """
        now = now or self.clock()
        now_ms = to_millis(now)
        floor_ms = now_ms - int(self.settings.past_tolerance * 1000)
        prepared: list[Template | Exception | None] = [None] * len(rows.templates)
        results: list[ScheduleResult | None] = []
        accepted: list[tuple[int, Row]] = []
        keys = rows.keys or [""] * len(rows)
        for index, (number, micros, key) in enumerate(
            zip(rows.template, rows.run_micros, keys, strict=True)
        ):
            template = prepared[number]
            if template is None:
                template = prepared[number] = self._prepare(rows, fields, number)
            run_ms = (micros + 500) // 1000  # model.millis_of_micros, inlined on the hot path
            if (
                type(template) is Template
                and floor_ms <= run_ms
                and MIN_MICROS <= micros <= MAX_RUN_MICROS
                and len(key) <= MAX_KEY
            ):
                results.append(None)
                accepted.append(
                    (index, template_row(template, task_id_for(key), key, run_ms, number))
                )
                continue
            error = self._row_error(
                rows.templates[number], template, index, micros, key, now_ms, fields
            )
            results.append(ScheduleResult("", Outcome.REJECTED, error))
        shared = [t.fields if type(t) is Template else [] for t in prepared]
        new = NewTasks(shared, [row for _, row in accepted], now_ms)
        return PreparedBatch(now, fields, results, [index for index, _ in accepted], new)

    def store_prepared(self, batch: PreparedBatch) -> list[ScheduleResult]:
        """Store a prepared batch in one round trip; every row's result, in row order."""
        stored = self.store.schedule_new(
            batch.new, window_seconds=self.settings.handoff_window, now=batch.now
        )
        return self.settle(batch, stored)

    def settle(self, batch: PreparedBatch, stored: list[ScheduleResult]) -> list[ScheduleResult]:
        """Every row's result, in row order, from what the store said of the accepted rows."""
        if log.isEnabledFor(logging.DEBUG):
            for result in stored:
                if result.outcome is Outcome.CREATED:
                    log.debug("scheduled", extra={"task_id": result.id})
        results = batch.results
        for index, result in zip(batch.accepted, stored, strict=True):
            if isinstance(result.error, AlreadyExists):
                violation = FieldViolation(batch.fields.key.format(index), result.error.message)
                result = replace(
                    result, error=AlreadyExists(result.error.message, violations=(violation,))
                )
            results[index] = result
        return [r for r in results if r is not None]

    def _prepare(self, rows: TaskRows, fields: BatchFields, number: int) -> Template | Exception:
        """A template's encoding, or the error naming what no row of it may have."""
        spec = rows.templates[number]
        if isinstance(spec, Exception):
            return spec
        if not rows.reused:
            return self._check_template(spec, fields.template.format(number))
        known = self._templates.get(id(spec))
        if known is not None and known[0] is spec:
            return known[1]
        template = self._check_template(spec, fields.template.format(number))
        if isinstance(template, Template):
            # Kept by identity, with the spec itself so the id stays its: callers that
            # convert equal templates to one object (rows_from_columns) skip the checks.
            cost = sum(map(len, template.fields)) + len(template.head) + len(template.tail)
            self._templates.put(id(spec), (spec, template), 2 * cost + ENTRY_OVERHEAD)
            if rows.keep is not None:
                rows.keep(number)
        return template

    def check_template(self, spec: TaskSpec, prefix: str) -> None:
        """InvalidArgument naming the field unless ``spec`` may be scheduled (time aside)."""
        checked = self._check_template(spec, prefix)
        if isinstance(checked, InvalidArgument):
            raise checked

    def _check_template(self, spec: TaskSpec, prefix: str) -> Template | InvalidArgument:
        """Check and encode what a template's rows share, or the error naming its field."""
        args_json = dumps(spec.args) if spec.args else ""
        kwargs_json = dumps(spec.kwargs) if spec.kwargs else ""
        size = len(args_json or "[]") + len(kwargs_json or "{}")
        if size <= self.settings.max_args_bytes and _labels_fit(spec.labels):
            try:
                self.registry.check(spec.task, spec.args, spec.kwargs, field_prefix=prefix)
                self.registry.check_queue(spec.queue, field_prefix=prefix)
            except InvalidArgument as exc:
                return exc
            return encode_template(spec, args_json, kwargs_json)
        # Sizes first: the registry keeps verdicts by keyword names, which must be small.
        violations: list[FieldViolation] = []
        if size > self.settings.max_args_bytes:
            violations.append(
                FieldViolation(
                    f"{prefix}args",
                    f"args and kwargs take {size} bytes as JSON, more than the limit of "
                    f"{self.settings.max_args_bytes} (SCHEDKIT_MAX_ARGS_BYTES); pass a reference "
                    "to the data instead",
                )
            )
        if len(spec.labels) > MAX_LABELS:
            violations.append(FieldViolation(f"{prefix}labels", f"more than {MAX_LABELS} labels"))
        for name, value in spec.labels.items():
            if not name or len(name) > MAX_LABEL_KEY or len(value) > MAX_LABEL_VALUE:
                violations.append(
                    FieldViolation(
                        f"{prefix}labels[{excerpt(name)!r}]",
                        f"label names take 1 to {MAX_LABEL_KEY} chars, values up to "
                        f"{MAX_LABEL_VALUE}",
                    )
                )
        return InvalidArgument.for_fields(violations)

    def _row_error(
        self,
        given: TaskSpec | Exception,
        template: Template | Exception,
        index: int,
        micros: int,
        key: str,
        now_ms: int,
        fields: BatchFields,
    ) -> Exception:
        """Why one row is refused: its own fields' violations after its template's."""
        if isinstance(given, Exception):
            return given  # refused before it got here, already naming its fields
        if isinstance(template, Exception) and not isinstance(template, InvalidArgument):
            return template
        violations: list[FieldViolation] = []
        run_field = fields.run_time.format(index)
        tolerance_ms = int(self.settings.past_tolerance * 1000)
        if not MIN_MICROS <= micros <= MAX_MICROS:
            violations.append(FieldViolation(run_field, "not a valid timestamp (years 1 to 9999)"))
        elif micros > MAX_RUN_MICROS:
            violations.append(FieldViolation(run_field, RUN_TIME_TOO_LATE))
        elif millis_of_micros(micros) < now_ms - tolerance_ms:
            ago = timedelta(milliseconds=now_ms - millis_of_micros(micros))
            violations.append(
                FieldViolation(
                    run_field,
                    f"{from_micros(micros).isoformat()} is {_human(ago)} in the past; times up "
                    f"to {_human(timedelta(milliseconds=tolerance_ms))} late run at once, older "
                    "ones are refused (SCHEDKIT_PAST_TOLERANCE)",
                )
            )
        if len(key) > MAX_KEY:
            violations.append(
                FieldViolation(fields.key.format(index), f"longer than {MAX_KEY} chars")
            )
        if isinstance(template, InvalidArgument):
            if not violations:
                return template  # shared by the template's rows, its message as made
            violations[1:1] = template.violations
        return InvalidArgument.for_fields(violations)

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
            raise NotFound(f"no task with id {excerpt(task_id)!r}")
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

    def revoke(self, task_id: str) -> None:
        """Spare the worker a start of a cancelled, handed-off task (best effort)."""
        self._revoke(task_id)

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

    def task_types(self) -> list[TaskType]:
        """The tasks that may be scheduled."""
        return self.registry.task_types()


def created_record(spec: TaskSpec, task_id: str, now: datetime) -> TaskRecord:
    """The record the store holds for ``spec`` just created at ``now``: the spec at the
    store's millisecond precision, SCHEDULED (so a caller need not read it back)."""
    stored = replace(
        spec,
        run_at=from_millis(to_millis(spec.run_at)),
        expires_after=None
        if spec.expires_after is None
        else timedelta(milliseconds=spec.expires_after // _MILLISECOND),
    )
    return TaskRecord(task_id, stored, TaskState.SCHEDULED, created_at=from_millis(to_millis(now)))


def wanted_changes(query: TaskQuery, changes: Sequence[StateChange]) -> list[StateChange]:
    """The changes ``query`` may want, judged without reading records (state and id)."""
    return [
        c
        for c in changes
        if (not query.states or c.state in query.states)
        and (not query.ids or c.task_id in query.ids)
    ]


def matching_changes(
    query: TaskQuery, wanted: Sequence[StateChange], records: Sequence[TaskRecord | None]
) -> Iterator[tuple[TaskRecord, StateChange]]:
    """(task, change) for the wanted changes whose record matches ``query``."""
    for change, record in zip(wanted, records, strict=True):
        if record is not None and _matches_besides_state(query, record):
            # Changes read together share one later record: report each change's state,
            # or a STARTED read with its SUCCEEDED would be sent as SUCCEEDED twice.
            yield replace(record, state=change.state), change


def _matches_besides_state(query: TaskQuery, record: TaskRecord) -> bool:
    # The record may already be past the change being reported; the change's state was checked.
    return TaskQuery(
        task=query.task,
        labels=query.labels,
        run_after=query.run_after,
        run_before=query.run_before,
    ).matches(record)


_MILLISECOND = timedelta(milliseconds=1)


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
