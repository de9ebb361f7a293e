"""Schedule messages to domain types and back, with errors that name the field."""

from __future__ import annotations

from datetime import datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2

from schedkit.errors import FieldViolation, InvalidArgument
from schedkit.recurrence import DstRule, Recurrence
from schedkit.recurring import DEFAULT_CATCHUP, Overlap, ScheduleDef, ScheduleRecord
from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.wire.convert import (
    datetime_to_timestamp,
    duration_to_timedelta,
    spec_from_proto,
    spec_to_proto,
    timestamp_to_datetime,
)

_DST: dict[pb.DstPolicy.ValueType, DstRule] = {
    pb.DST_POLICY_UNSPECIFIED: "cron",
    pb.DST_POLICY_SHIFT: "shift",
    pb.DST_POLICY_EARLIEST: "earliest",
    pb.DST_POLICY_LATEST: "latest",
}
_DST_BACK = {rule: value for value, rule in _DST.items()}
_OVERLAP: dict[pb.OverlapPolicy.ValueType, Overlap] = {
    pb.OVERLAP_POLICY_SKIP: Overlap.SKIP,
    pb.OVERLAP_POLICY_BUFFER_ONE: Overlap.BUFFER_ONE,
    pb.OVERLAP_POLICY_BUFFER_ALL: Overlap.BUFFER_ALL,
    pb.OVERLAP_POLICY_CANCEL_OTHER: Overlap.CANCEL_OTHER,
    pb.OVERLAP_POLICY_ALLOW_ALL: Overlap.ALLOW_ALL,
}
_OVERLAP_BACK = {policy: value for value, policy in _OVERLAP.items()}


def overlap_from_proto(value: int, field: str) -> Overlap | None:
    """The policy an enum value names; None for UNSPECIFIED."""
    if value == pb.OVERLAP_POLICY_UNSPECIFIED:
        return None
    policy = _OVERLAP.get(pb.OverlapPolicy.ValueType(value))
    if policy is None:
        raise InvalidArgument.for_field(field, f"unknown overlap policy {value}")
    return policy


def overlap_to_proto(policy: Overlap) -> pb.OverlapPolicy.ValueType:
    """The enum value of a policy."""
    return _OVERLAP_BACK[policy]


def definition_from_proto(msg: pb.Schedule, prefix: str = "schedule.") -> ScheduleDef:
    """A ScheduleDef from a Schedule message; its id, state and times are not read."""
    violations: list[FieldViolation] = []
    spec = msg.spec
    sp = f"{prefix}spec."

    def moment(field: str, present: bool, ts: timestamp_pb2.Timestamp) -> datetime | None:
        if not present:
            return None
        try:
            return timestamp_to_datetime(ts, f"{sp}{field}")
        except InvalidArgument as exc:
            violations.extend(exc.violations)
            return None

    def delta(field: str, present: bool, value: duration_pb2.Duration) -> timedelta | None:
        if not present:
            return None
        try:
            return duration_to_timedelta(value, field)
        except InvalidArgument as exc:
            violations.extend(exc.violations)
            return None

    if pb.DstPolicy.ValueType(spec.dst_policy) not in _DST:
        violations.append(
            FieldViolation(f"{sp}dst_policy", f"unknown DST policy {spec.dst_policy}")
        )
    overlap = Overlap.SKIP
    try:
        overlap = overlap_from_proto(msg.policies.overlap, f"{prefix}policies.overlap") or overlap
    except InvalidArgument as exc:
        violations.extend(exc.violations)
    action = None
    if not msg.action.HasField("task"):
        violations.append(FieldViolation(f"{prefix}action.task", "required: the task to run"))
    else:
        try:
            action = spec_from_proto(msg.action.task, f"{prefix}action.task.", template=True)
        except InvalidArgument as exc:
            violations.extend(exc.violations)
    recurrence = Recurrence(
        cron=tuple(spec.cron_expressions),
        exclude=tuple(spec.exclude_cron_expressions),
        every=delta(f"{sp}every", spec.HasField("every"), spec.every),
        tz=spec.time_zone or "UTC",
        dst=_DST.get(pb.DstPolicy.ValueType(spec.dst_policy), "cron"),
        start=moment("start_time", spec.HasField("start_time"), spec.start_time),
        end=moment("end_time", spec.HasField("end_time"), spec.end_time),
    )
    jitter = delta(f"{sp}jitter", spec.HasField("jitter"), spec.jitter) or timedelta(0)
    catchup = delta(
        f"{prefix}policies.catchup_window",
        msg.policies.HasField("catchup_window"),
        msg.policies.catchup_window,
    )
    if violations or action is None:
        raise InvalidArgument.for_fields(violations)
    return ScheduleDef(
        recurrence=recurrence,
        action=action,
        jitter=jitter,
        max_runs=spec.max_runs,
        overlap=overlap,
        catchup_window=DEFAULT_CATCHUP if catchup is None else catchup,
        pause_on_failure=msg.policies.pause_on_failure,
        labels=dict(msg.labels),
        coalesce=msg.policies.coalesce,
    )


def _duration(delta: timedelta) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(delta)
    return out


def definition_to_proto(d: ScheduleDef) -> pb.Schedule:
    """A Schedule message holding a definition (no id, state or times)."""
    rec = d.recurrence
    spec = pb.ScheduleSpec(
        cron_expressions=list(rec.cron),
        exclude_cron_expressions=list(rec.exclude),
        time_zone=rec.tz,
        dst_policy=_DST_BACK[rec.dst],
        max_runs=d.max_runs,
    )
    if rec.every is not None:
        spec.every.CopyFrom(_duration(rec.every))
    if rec.start is not None:
        spec.start_time.CopyFrom(datetime_to_timestamp(rec.start))
    if rec.end is not None:
        spec.end_time.CopyFrom(datetime_to_timestamp(rec.end))
    if d.jitter:
        spec.jitter.CopyFrom(_duration(d.jitter))
    msg = pb.Schedule(
        spec=spec,
        action=pb.ScheduleAction(task=spec_to_proto(d.action)),
        policies=pb.SchedulePolicies(
            overlap=_OVERLAP_BACK[d.overlap],
            catchup_window=_duration(d.catchup_window),
            pause_on_failure=d.pause_on_failure,
            coalesce=d.coalesce,
        ),
        labels=dict(d.labels),
    )
    # The action is a template: its run time is not one.
    msg.action.task.ClearField("run_time")
    return msg


def schedule_to_proto(
    record: ScheduleRecord, next_times: list[datetime] | None = None
) -> pb.Schedule:
    """The Schedule message of a record, with the next nominal times given."""
    msg = definition_to_proto(record.definition)
    msg.id = record.id
    msg.state.CopyFrom(
        pb.ScheduleState(
            paused=record.paused,
            note=record.note,
            next_run_times=[datetime_to_timestamp(t) for t in next_times or []],
            recent_runs=[
                pb.ScheduleRun(nominal_time=datetime_to_timestamp(r.nominal), task_id=r.task_id)
                for r in record.recent_runs
            ],
            run_count=record.run_count,
        )
    )
    msg.create_time.CopyFrom(datetime_to_timestamp(record.created_at))
    msg.update_time.CopyFrom(datetime_to_timestamp(record.updated_at))
    return msg
