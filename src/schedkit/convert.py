"""Conversions between protobuf messages and domain types, with field-named errors."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2

from schedkit.errors import FieldViolation, InvalidArgument
from schedkit.model import Outcome, TaskRecord, TaskSpec, TaskState
from schedkit.registry import TaskType
from schedkit.v1 import schedule_service_pb2 as pb

# Protobuf Timestamps may hold years 1-9999; Python datetimes agree.
_MIN_SECONDS = -62135596800
_MAX_SECONDS = 253402300799


def plain_numbers(value: Any) -> Any:
    """Turn whole floats back into ints: protobuf's Struct carries every number as a double."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, list):
        return [plain_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: plain_numbers(v) for k, v in value.items()}
    return value


def timestamp_to_datetime(ts: timestamp_pb2.Timestamp, field: str) -> datetime:
    """A tz-aware UTC datetime, or InvalidArgument naming ``field``."""
    if not (_MIN_SECONDS <= ts.seconds <= _MAX_SECONDS) or not (0 <= ts.nanos < 1_000_000_000):
        raise InvalidArgument.for_field(field, "not a valid timestamp (years 1 to 9999)")
    return ts.ToDatetime(tzinfo=UTC)


def datetime_to_timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    """A Timestamp from a tz-aware datetime."""
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(moment)
    return ts


def spec_from_proto(msg: pb.TaskSpec, prefix: str = "spec.") -> TaskSpec:
    """A TaskSpec from its message; every problem is a FieldViolation under ``prefix``."""
    violations: list[FieldViolation] = []
    run_at = datetime.fromtimestamp(0, UTC)
    if not msg.task.strip():
        violations.append(FieldViolation(f"{prefix}task", "required: a task name"))
    if not msg.HasField("run_time"):
        violations.append(FieldViolation(f"{prefix}run_time", "required: when the task runs"))
    else:
        try:
            run_at = timestamp_to_datetime(msg.run_time, f"{prefix}run_time")
        except InvalidArgument as exc:
            violations.extend(exc.violations)
    priority = msg.priority if msg.HasField("priority") else None
    if priority is not None and not 0 <= priority <= 255:
        violations.append(FieldViolation(f"{prefix}priority", "must be between 0 and 255"))
    expires_after = None
    if msg.HasField("expires_after"):
        try:
            expires_after = msg.expires_after.ToTimedelta()
        except (OverflowError, ValueError):
            # Past what a timedelta holds (about 2.7 million years): no real expiry is.
            violations.append(
                FieldViolation(f"{prefix}expires_after", "out of range: not a usable duration")
            )
        else:
            if expires_after <= timedelta(0):
                violations.append(FieldViolation(f"{prefix}expires_after", "must be positive"))
    args = _plain(msg, "args", [], prefix, violations)
    kwargs = _plain(msg, "kwargs", {}, prefix, violations)
    _check_finite(args, f"{prefix}args", violations)
    _check_finite(kwargs, f"{prefix}kwargs", violations)
    if violations:
        raise InvalidArgument(
            "; ".join(f"{v.field}: {v.description}" for v in violations),
            violations=tuple(violations),
        )
    return TaskSpec(
        task=msg.task.strip(),
        run_at=run_at,
        args=args,
        kwargs=kwargs,
        key=msg.idempotency_key,
        queue=msg.queue,
        priority=priority,
        labels=dict(msg.labels),
        expires_after=expires_after,
    )


def _plain(
    msg: pb.TaskSpec,
    name: Literal["args", "kwargs"],
    empty: Any,
    prefix: str,
    violations: list[FieldViolation],
) -> Any:
    if not msg.HasField(name):
        return empty
    try:
        return plain_numbers(json_format.MessageToDict(getattr(msg, name)))
    except ValueError:
        # protobuf refuses to turn NaN or infinity into JSON.
        violations.append(FieldViolation(f"{prefix}{name}", "NaN and infinity are not JSON"))
        return empty


def _check_finite(value: Any, field: str, violations: list[FieldViolation]) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        violations.append(FieldViolation(field, "NaN and infinity are not JSON"))
    elif isinstance(value, list):
        for item in value:
            _check_finite(item, field, violations)
    elif isinstance(value, dict):
        for item in value.values():
            _check_finite(item, field, violations)


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

    spec = spec_from_proto(msg.spec)
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
    return ts.ToDatetime(tzinfo=UTC)


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


def duration_to_timedelta(value: duration_pb2.Duration) -> timedelta:
    """A timedelta from a Duration."""
    return value.ToTimedelta()
