"""Conversions between protobuf messages and domain types, with field-named errors."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from schedkit.errors import FieldViolation, InvalidArgument
from schedkit.model import (
    EPOCH,
    MAX_RUN_MICROS,
    MAX_SECONDS,
    MIN_SECONDS,
    RUN_TIME_TOO_LATE,
    Outcome,
    TaskRecord,
    TaskRows,
    TaskSpec,
    TaskState,
    TaskType,
    to_micros,
)
from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.wire.cache import TemplateCache

#: How deep args and kwargs may nest, counting the args list or kwargs object itself. A Python
#: protobuf client (upb, depth limit 100) cannot parse a ListTasksResponse or WatchTasksResponse
#: holding kwargs 34 objects deep (each object costs three message levels); 24 leaves margin
#: for clients that nest the task deeper or count differently.
MAX_NESTING = 24
_MILLISECOND = timedelta(milliseconds=1)
#: The largest Duration protobuf defines: 10,000 years.
MAX_DURATION_SECONDS = 315_576_000_000


def timestamp_to_datetime(ts: timestamp_pb2.Timestamp, field: str) -> datetime:
    """A tz-aware UTC datetime, or InvalidArgument naming ``field``."""
    if not (MIN_SECONDS <= ts.seconds <= MAX_SECONDS) or not (0 <= ts.nanos < 1_000_000_000):
        raise InvalidArgument.for_field(field, "not a valid timestamp (years 1 to 9999)")
    return _moment(ts)


def run_time_to_datetime(ts: timestamp_pb2.Timestamp, field: str) -> datetime:
    """A run time as a datetime, refused unless it stays in the year 9999 once stored (ms)."""
    moment = timestamp_to_datetime(ts, field)
    if to_micros(moment) > MAX_RUN_MICROS:
        raise InvalidArgument.for_field(field, RUN_TIME_TOO_LATE)
    return moment


def datetime_to_timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    """A Timestamp from a tz-aware datetime."""
    if moment.tzinfo is None:
        ts = timestamp_pb2.Timestamp()
        ts.FromDatetime(moment)  # naive: read as UTC, as protobuf does
        return ts
    # Plain arithmetic: Timestamp.FromDatetime is pure Python and shows in ListTasks pages.
    delta = moment - EPOCH
    return timestamp_pb2.Timestamp(
        seconds=delta.days * 86400 + delta.seconds, nanos=delta.microseconds * 1000
    )


def spec_from_proto(
    msg: pb.TaskSpec,
    prefix: str = "spec.",
    *,
    template: bool = False,
    max_nesting: int = MAX_NESTING,
) -> TaskSpec:
    """A TaskSpec from its message; every problem is a FieldViolation under ``prefix``.

    On the hot path of every ScheduleTasks batch: fields are read directly (no json_format),
    and the common case builds no violation list.
    A ``template`` of TaskColumns has no run time or key of its own (rows carry them).
    ``max_nesting`` bounds how deep args and kwargs may nest (see MAX_NESTING).
    """
    violations: list[FieldViolation] = []
    task = msg.task.strip()
    if not task:
        violations.append(FieldViolation(f"{prefix}task", "required: a task name"))
    run_at = EPOCH
    if template:
        if msg.HasField("run_time"):
            violations.append(
                FieldViolation(f"{prefix}run_time", "set per row, in columns.run_time_micros")
            )
        if msg.idempotency_key:
            violations.append(
                FieldViolation(
                    f"{prefix}idempotency_key", "set per row, in columns.idempotency_keys"
                )
            )
    elif not msg.HasField("run_time"):
        violations.append(FieldViolation(f"{prefix}run_time", "required: when the task runs"))
    else:
        try:
            run_at = run_time_to_datetime(msg.run_time, f"{prefix}run_time")
        except InvalidArgument as exc:
            violations.extend(exc.violations)
    priority = msg.priority if msg.HasField("priority") else None
    if priority is not None and not 0 <= priority <= 255:
        violations.append(FieldViolation(f"{prefix}priority", "must be between 0 and 255"))
    expires_after = None
    if msg.HasField("expires_after"):
        try:
            expires_after = duration_to_timedelta(msg.expires_after, f"{prefix}expires_after")
        except InvalidArgument as exc:
            violations.extend(exc.violations)
        else:
            if expires_after < _MILLISECOND:
                # The store keeps whole milliseconds: less would be stored as no time at all.
                violations.append(
                    FieldViolation(f"{prefix}expires_after", "must be positive, at least 1 ms")
                )
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    # _from_value counts levels up to MAX_NESTING; args and kwargs are level 1, their items 2.
    start = 2 + MAX_NESTING - max_nesting
    try:
        if msg.HasField("args"):
            args = [_from_value(v, start) for v in msg.args.values]
    except _NotJson as exc:
        violations.append(FieldViolation(f"{prefix}args", str(exc)))
    try:
        if msg.HasField("kwargs"):
            kwargs = {k: _from_value(v, start) for k, v in msg.kwargs.fields.items()}
    except _NotJson as exc:
        violations.append(FieldViolation(f"{prefix}kwargs", str(exc)))
    if violations:
        raise InvalidArgument.for_fields(violations)
    return TaskSpec(
        task=task,
        run_at=run_at,
        args=args,
        kwargs=kwargs,
        key=msg.idempotency_key,
        queue=msg.queue,
        priority=priority,
        labels=dict(msg.labels) if msg.labels else {},
        expires_after=expires_after,
    )


def rows_from_columns(
    msg: pb.TaskColumns, batch: str = "", *, known: TemplateCache | None = None
) -> TaskRows:
    """The rows of a TaskColumns batch. Columns of unequal length, or more templates than
    rows, refuse the whole batch (named with the ``batch`` prefix); a bad template or template
    index refuses just the rows that use it.

    ``known`` holds templates already converted and checked (by their deterministic wire
    bytes), which then come back as the same object: a stream's batches mostly repeat the
    templates of earlier ones, and converting a template costs far more than its bytes. A
    template joins ``known`` only once every check of it passed (``TaskRows.keep``), and one
    too large for any accepted task is refused before it is converted. Without ``known``, the
    limits of the default settings apply.
    """
    limits = known if known is not None else _DEFAULT_LIMITS
    count = len(msg.template_index)
    if len(msg.run_time_micros) != count or len(msg.idempotency_keys) not in (0, count):
        raise InvalidArgument.for_field(
            f"{batch}columns",
            f"{count} template_index, {len(msg.run_time_micros)} run_time_micros and "
            f"{len(msg.idempotency_keys)} idempotency_keys: give one of each per row "
            "(idempotency_keys may be left empty)",
        )
    if len(msg.templates) > min(max(count, 1), limits.max_templates):
        # Templates beyond the rows are never used: refused before any is read, so a batch
        # cannot make the server convert more templates than it schedules rows.
        raise InvalidArgument.for_field(
            f"{batch}columns.templates",
            f"{len(msg.templates)} templates for {count} rows: send at most one per row "
            f"(and at most {limits.max_templates}, SCHEDKIT_MAX_BATCH)",
        )
    templates: list[TaskSpec | Exception] = []
    fresh: dict[int, bytes] = {}  # templates converted here: kept once checked
    for number, message in enumerate(msg.templates):
        spec = _template(message, number, known, limits.max_template_bytes, fresh)
        templates.append(spec)
    indexes: Sequence[int] = msg.template_index
    if count and max(indexes) >= len(templates):
        # Each row pointing past the templates gets a template of its own: its error.
        indexes = list(indexes)
        for row, number in enumerate(indexes):
            if number >= len(msg.templates):
                indexes[row] = len(templates)
                templates.append(
                    InvalidArgument.for_field(
                        f"columns.template_index[{row}]",
                        f"{number} is past the last of {len(msg.templates)} templates",
                    )
                )
    keep = None
    if known is not None and fresh:
        keep = _keeper(known, templates, fresh)
    return TaskRows(
        templates,
        indexes,
        msg.run_time_micros,
        msg.idempotency_keys,
        reused=known is not None,
        keep=keep,
    )


# The limits of the default settings, for conversions without a cache; it keeps nothing.
_DEFAULT_LIMITS = TemplateCache(max_bytes=0)


def too_large(
    message: pb.TaskSpec, prefix: str, max_bytes: int, *, what: str = "spec"
) -> InvalidArgument | None:
    """The error of a TaskSpec too large for any task within the limits, whatever it holds:
    judged by its wire size, before anything is converted (converting costs far more). The
    error names the field that takes most of it."""
    size = message.ByteSize()
    if size <= max_bytes:
        return None
    sizes = {
        "args": message.args.ByteSize(),
        "kwargs": message.kwargs.ByteSize(),
        "labels": sum(len(k) + len(v) for k, v in message.labels.items()),
        "task": len(message.task),
        "idempotency_key": len(message.idempotency_key),
        "queue": len(message.queue),
    }
    largest = max(sizes, key=lambda name: sizes[name])
    return InvalidArgument.for_field(
        f"{prefix}{largest}",
        f"the {what} takes {size} bytes, more than any task within the limits can "
        f"(SCHEDKIT_MAX_ARGS_BYTES for args and kwargs; short names, keys and labels); "
        f"its {largest} take most of it: pass a reference to the data instead",
    )


def _template(
    message: pb.TaskSpec,
    number: int,
    known: TemplateCache | None,
    max_bytes: int,
    fresh: dict[int, bytes],
) -> TaskSpec | Exception:
    """Template ``number`` of a batch: as kept in ``known``, converted, or its error."""
    prefix = f"columns.templates[{number}]."
    oversized = too_large(message, prefix, max_bytes, what="template")
    if oversized is not None:
        return oversized
    wire = message.SerializeToString(deterministic=True) if known is not None else b""
    spec = known.get(wire) if known is not None else None
    if spec is not None:
        return spec
    try:
        spec = spec_from_proto(message, prefix=prefix, template=True)
    except InvalidArgument as exc:
        return exc  # not kept: its message names this batch's index
    if known is not None:
        fresh[number] = wire
    return spec


def _keeper(
    known: TemplateCache, templates: Sequence[TaskSpec | Exception], fresh: dict[int, bytes]
) -> Callable[[int], None]:
    """What ``TaskRows.keep`` calls once template ``number`` passed every check."""

    def keep(number: int) -> None:
        wire = fresh.pop(number, None)
        spec = templates[number]
        if wire is not None and isinstance(spec, TaskSpec):
            known.put(wire, spec)

    return keep


class _NotJson(ValueError):
    """What protobuf can carry but schedkit will not store: NaN, infinity, deep nesting."""


_NOT_FINITE = "NaN and infinity are not JSON"
_TOO_DEEP = (
    f"nested more than {MAX_NESTING} lists or objects deep (args and kwargs themselves are "
    "the first); clients could not read the task back"
)
# Deeper than protobuf parses (100 message levels): no nesting limit of schedkit's own.
_ANY_NESTING = 1000


def _from_value(value: struct_pb2.Value, depth: int) -> Any:
    # A hand walk of struct_pb2.Value: json_format.MessageToDict is ~20x slower per value.
    # ``depth`` is the nesting of a list or object met here (args and kwargs themselves are 1).
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if number.is_integer() and abs(number) < 2**53:
            return int(number)  # Struct carries every number as a double
        if not math.isfinite(number):
            raise _NotJson(_NOT_FINITE)
        return number
    if kind == "bool_value":
        return value.bool_value
    if kind == "list_value":
        if depth > MAX_NESTING:
            raise _NotJson(_TOO_DEEP)
        return [_from_value(v, depth + 1) for v in value.list_value.values]
    if kind == "struct_value":
        if depth > MAX_NESTING:
            raise _NotJson(_TOO_DEEP)
        return {k: _from_value(v, depth + 1) for k, v in value.struct_value.fields.items()}
    return None


def spec_to_proto(spec: TaskSpec) -> pb.TaskSpec:
    """The message of a TaskSpec."""
    msg = pb.TaskSpec(
        task=spec.task,
        run_time=datetime_to_timestamp(spec.run_at),
        idempotency_key=spec.key,
        queue=spec.queue,
        labels=dict(spec.labels),
    )
    if spec.args:
        msg.args.CopyFrom(_list_value(spec.args))
    if spec.kwargs:
        msg.kwargs.CopyFrom(_struct(spec.kwargs))
    if spec.priority is not None:
        msg.priority = spec.priority
    if spec.expires_after is not None:
        duration = duration_pb2.Duration()
        duration.FromTimedelta(spec.expires_after)
        msg.expires_after.CopyFrom(duration)
    return msg


def _list_value(values: list[Any]) -> struct_pb2.ListValue:
    msg = struct_pb2.ListValue()
    msg.extend(values)
    return msg


def _struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    msg = struct_pb2.Struct()
    msg.update(values)
    return msg


def _maybe_timestamp(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    return datetime_to_timestamp(moment) if moment is not None else None


def task_to_proto(record: TaskRecord) -> pb.Task:
    """The message of a stored task."""
    return pb.Task(
        id=record.id,
        spec=spec_to_proto(record.spec),
        state=state_to_proto(record.state),
        create_time=datetime_to_timestamp(record.created_at),
        queue_time=_maybe_timestamp(record.queued_at),
        start_time=_maybe_timestamp(record.started_at),
        finish_time=_maybe_timestamp(record.finished_at),
        attempts=record.attempts,
        result=record.result,
        error=record.error,
        traceback=record.traceback,
    )


def task_from_proto(msg: pb.Task) -> TaskRecord:
    """A TaskRecord from its message (client side)."""

    # Whatever parsed is read, nested as deep as it is: tasks stored before MAX_NESTING too.
    spec = spec_from_proto(msg.spec, max_nesting=_ANY_NESTING)
    return TaskRecord(
        id=msg.id,
        spec=spec,
        state=state_from_proto(msg.state),
        created_at=_moment(msg.create_time),
        queued_at=_moment(msg.queue_time) if msg.HasField("queue_time") else None,
        started_at=_moment(msg.start_time) if msg.HasField("start_time") else None,
        finished_at=_moment(msg.finish_time) if msg.HasField("finish_time") else None,
        attempts=msg.attempts,
        result=msg.result,
        error=msg.error,
        traceback=msg.traceback,
    )


def _moment(ts: timestamp_pb2.Timestamp) -> datetime:
    # Plain arithmetic: Timestamp.ToDatetime is pure Python and shows on the ingest path.
    return EPOCH + timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)


def state_to_proto(state: TaskState) -> pb.TaskState.ValueType:
    """TaskState.QUEUED -> TASK_STATE_QUEUED."""
    return pb.TaskState.Value(f"TASK_STATE_{state.value}")


def state_from_proto(value: int, field: str = "state") -> TaskState:
    """TASK_STATE_QUEUED -> TaskState.QUEUED; UNSPECIFIED or unknown is InvalidArgument."""
    try:
        name = pb.TaskState.Name(value)  # type: ignore[arg-type]
    except ValueError:
        name = ""
    if not name.startswith("TASK_STATE_") or name == "TASK_STATE_UNSPECIFIED":
        raise InvalidArgument.for_field(field, f"{value} is not a task state")
    return TaskState(name.removeprefix("TASK_STATE_"))


def outcome_to_proto(outcome: Outcome) -> pb.ScheduleOutcome.ValueType:
    """Outcome.CREATED -> SCHEDULE_OUTCOME_CREATED."""
    return pb.ScheduleOutcome.Value(f"SCHEDULE_OUTCOME_{outcome.value}")


def outcome_from_proto(value: int) -> Outcome:
    """SCHEDULE_OUTCOME_CREATED -> Outcome.CREATED."""
    return Outcome(pb.ScheduleOutcome.Name(value).removeprefix("SCHEDULE_OUTCOME_"))  # type: ignore[arg-type]


def task_type_to_proto(task_type: TaskType) -> pb.TaskType:
    """The message of a TaskType."""
    return pb.TaskType(name=task_type.name, signature=task_type.signature, doc=task_type.doc)


def duration_to_timedelta(value: duration_pb2.Duration, field: str) -> timedelta:
    """A timedelta from a valid Duration, or InvalidArgument naming ``field``."""
    seconds, nanos = value.seconds, value.nanos
    if not -1_000_000_000 < nanos < 1_000_000_000 or (seconds > 0 > nanos or seconds < 0 < nanos):
        raise InvalidArgument.for_field(
            field,
            "not a valid duration: nanos between -999,999,999 and 999,999,999, of the "
            "sign of seconds",
        )
    if abs(seconds) > MAX_DURATION_SECONDS:
        raise InvalidArgument.for_field(field, "out of range: more than 10,000 years")
    return timedelta(
        seconds=seconds, microseconds=nanos // 1000 if nanos >= 0 else -(-nanos // 1000)
    )
