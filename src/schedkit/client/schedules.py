"""The client's schedule and edit methods: recurring schedules kept on the server, moving a
parked task, cancelling by filter.

Each method is planned once (:class:`Plan`: the RPC, its request, how to read the answer) by
a function here; :class:`ScheduleMethods` (a mixin of :class:`schedkit.client.client.Client`)
and :class:`schedkit.client.aio_schedules.AsyncScheduleMethods` only send the plan, blocking
or awaited.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypedDict, TypeVar, Unpack

from schedkit.model import EPOCH, TaskRecord, TaskSpec, TaskState
from schedkit.recurrence import DstRule, Recurrence
from schedkit.recurring import DEFAULT_CATCHUP, Overlap, ScheduleDef, ScheduleRun
from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.v1 import schedule_service_pb2_grpc as pb_grpc
from schedkit.wire.convert import (
    datetime_to_timestamp,
    outcome_from_proto,
    spec_to_proto,
    state_to_proto,
    task_from_proto,
    timestamp_to_datetime,
)
from schedkit.wire.schedules import definition_from_proto, definition_to_proto, overlap_to_proto

T = TypeVar("T")


@dataclass(frozen=True)
class ScheduleInfo:
    """A schedule as the server shows it: its definition and state."""

    id: str
    definition: ScheduleDef
    paused: bool
    note: str
    run_count: int
    next_run_times: list[datetime] = field(default_factory=list)
    recent_runs: list[ScheduleRun] = field(default_factory=list)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    outcome: str = ""  # CREATED or EXISTING, from create_schedule


def schedule_from_proto(msg: pb.Schedule, outcome: str = "") -> ScheduleInfo:
    """A ScheduleInfo from a Schedule message."""
    state = msg.state
    return ScheduleInfo(
        id=msg.id,
        definition=definition_from_proto(msg),
        paused=state.paused,
        note=state.note,
        run_count=state.run_count,
        next_run_times=[timestamp_to_datetime(t, "next_run_times") for t in state.next_run_times],
        recent_runs=[
            ScheduleRun(timestamp_to_datetime(r.nominal_time, "nominal_time"), r.task_id)
            for r in state.recent_runs
        ],
        created_at=timestamp_to_datetime(msg.create_time, "create_time"),
        updated_at=timestamp_to_datetime(msg.update_time, "update_time"),
        outcome=outcome,
    )


def _overlap(value: Overlap | str | None) -> pb.OverlapPolicy.ValueType:
    return pb.OVERLAP_POLICY_UNSPECIFIED if value is None else overlap_to_proto(Overlap(value))


@dataclass(frozen=True)
class Plan(Generic[T]):
    """One call: the ScheduleService method's name, its request, and the answer's reading."""

    method: str
    request: Any
    read: Callable[[Any], T]


class ScheduleOptions(TypedDict, total=False):
    """``create_schedule``'s keyword arguments, typed once for both clients (defaults: see
    :func:`schedule_definition`)."""

    args: Sequence[Any]
    kwargs: Mapping[str, Any] | None
    cron: str | Sequence[str]
    every: timedelta | None
    exclude: Sequence[str]
    tz: str
    dst: DstRule
    start: datetime | None
    end: datetime | None
    jitter: timedelta
    max_runs: int
    overlap: Overlap | str
    catchup_window: timedelta
    pause_on_failure: bool
    coalesce: bool
    labels: Mapping[str, str] | None
    queue: str
    priority: int | None
    task_labels: Mapping[str, str] | None
    expires_after: timedelta | None


def schedule_definition(
    task: str,
    *,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    cron: str | Sequence[str] = (),
    every: timedelta | None = None,
    exclude: Sequence[str] = (),
    tz: str = "UTC",
    dst: DstRule = "cron",
    start: datetime | None = None,
    end: datetime | None = None,
    jitter: timedelta = timedelta(0),
    max_runs: int = 0,
    overlap: Overlap | str = Overlap.SKIP,
    catchup_window: timedelta = DEFAULT_CATCHUP,
    pause_on_failure: bool = False,
    coalesce: bool = False,
    labels: Mapping[str, str] | None = None,
    queue: str = "",
    priority: int | None = None,
    task_labels: Mapping[str, str] | None = None,
    expires_after: timedelta | None = None,
) -> ScheduleDef:
    """A :class:`ScheduleDef` from ``create_schedule``'s keyword arguments."""
    return ScheduleDef(
        recurrence=Recurrence(
            cron=(cron,) if isinstance(cron, str) else tuple(cron),
            every=every,
            exclude=tuple(exclude),
            tz=tz,
            dst=dst,
            start=start,
            end=end,
        ),
        action=TaskSpec(
            task,
            EPOCH,
            list(args),
            dict(kwargs or {}),
            queue=queue,
            priority=priority,
            labels=dict(task_labels or {}),
            expires_after=expires_after,
        ),
        jitter=jitter,
        max_runs=max_runs,
        overlap=Overlap(overlap),
        catchup_window=catchup_window,
        pause_on_failure=pause_on_failure,
        labels=dict(labels or {}),
        coalesce=coalesce,
    )


def _read_schedule(response: Any) -> ScheduleInfo:
    return schedule_from_proto(response.schedule)


def plan_create(schedule_id: str, definition: ScheduleDef) -> Plan[ScheduleInfo]:
    """CreateSchedule."""
    request = pb.CreateScheduleRequest(
        schedule_id=schedule_id, schedule=definition_to_proto(definition)
    )
    return Plan(
        "CreateSchedule",
        request,
        lambda r: schedule_from_proto(r.schedule, outcome_from_proto(r.outcome).value),
    )


def plan_get(schedule_id: str) -> Plan[ScheduleInfo]:
    """GetSchedule."""
    return Plan("GetSchedule", pb.GetScheduleRequest(id=schedule_id), _read_schedule)


def plan_page(
    labels: Mapping[str, str] | None, page_size: int, token: str
) -> Plan[tuple[list[ScheduleInfo], str]]:
    """One ListSchedules page and the next page's token ('' after the last)."""
    request = pb.ListSchedulesRequest(
        labels=dict(labels or {}), page_size=page_size, page_token=token
    )
    return Plan(
        "ListSchedules",
        request,
        lambda r: ([schedule_from_proto(s) for s in r.schedules], r.next_page_token),
    )


def plan_pause(schedule_id: str, note: str) -> Plan[ScheduleInfo]:
    """PauseSchedule."""
    return Plan("PauseSchedule", pb.PauseScheduleRequest(id=schedule_id, note=note), _read_schedule)


def plan_resume(schedule_id: str, note: str) -> Plan[ScheduleInfo]:
    """ResumeSchedule."""
    request = pb.ResumeScheduleRequest(id=schedule_id, note=note)
    return Plan("ResumeSchedule", request, _read_schedule)


def plan_trigger(schedule_id: str, overlap: Overlap | str | None) -> Plan[TaskRecord]:
    """TriggerSchedule."""
    request = pb.TriggerScheduleRequest(id=schedule_id, overlap=_overlap(overlap))
    return Plan("TriggerSchedule", request, lambda r: task_from_proto(r.task))


def plan_backfill(
    schedule_id: str, start: datetime, end: datetime, overlap: Overlap | str | None
) -> Plan[tuple[int, int]]:
    """BackfillSchedule: (created, already there)."""
    request = pb.BackfillScheduleRequest(
        id=schedule_id,
        start_time=datetime_to_timestamp(start),
        end_time=datetime_to_timestamp(end),
        overlap=_overlap(overlap),
    )
    return Plan("BackfillSchedule", request, lambda r: (r.created_count, r.existing_count))


def plan_delete(schedule_id: str) -> Plan[int]:
    """DeleteSchedule: how many parked runs were removed."""
    request = pb.DeleteScheduleRequest(id=schedule_id)
    return Plan("DeleteSchedule", request, lambda r: int(r.cancelled_count))


def plan_update_task(
    task_id: str,
    *,
    run_at: datetime | None,
    args: Sequence[Any] | None,
    kwargs: Mapping[str, Any] | None,
    labels: Mapping[str, str] | None,
    priority: int | None,
) -> Plan[TaskRecord]:
    """UpdateTask with a field mask of what is given."""
    spec = TaskSpec(
        "",
        run_at or EPOCH,
        list(args or []),
        dict(kwargs or {}),
        labels=dict(labels or {}),
        priority=priority,
    )
    given = {
        "run_time": run_at is not None,
        "args": args is not None,
        "kwargs": kwargs is not None,
        "labels": labels is not None,
        "priority": priority is not None,
    }
    request = pb.UpdateTaskRequest(id=task_id, spec=spec_to_proto(spec))
    request.update_mask.paths.extend(path for path, set_ in given.items() if set_)
    return Plan("UpdateTask", request, lambda r: task_from_proto(r.task))


def plan_cancel_tasks(
    *,
    task: str,
    labels: Mapping[str, str] | None,
    states: Sequence[TaskState | str],
    run_after: datetime | None,
    run_before: datetime | None,
) -> Plan[int]:
    """CancelTasks by filter: how many were cancelled."""
    flt = pb.TaskFilter(
        task=task,
        labels=dict(labels or {}),
        states=[state_to_proto(TaskState(s)) for s in states],
    )
    if run_after is not None:
        flt.run_after.CopyFrom(datetime_to_timestamp(run_after))
    if run_before is not None:
        flt.run_before.CopyFrom(datetime_to_timestamp(run_before))
    request = pb.CancelTasksRequest(filter=flt)
    return Plan("CancelTasks", request, lambda r: int(r.cancelled_count))


class ScheduleMethods:
    """Schedules and edits; see docs/schedules.md."""

    def _call(self, method: Callable[..., Any], request: Any) -> Any:
        raise NotImplementedError  # the Client's

    @property
    def _stub(self) -> pb_grpc.ScheduleServiceStub:
        raise NotImplementedError  # the Client's

    def _send(self, plan: Plan[T]) -> T:
        return plan.read(self._call(getattr(self._stub, plan.method), plan.request))

    def create_schedule(
        self, schedule_id: str, task: str, **options: Unpack[ScheduleOptions]
    ) -> ScheduleInfo:
        """Create a recurring schedule under ``schedule_id`` (the same call again is a no-op;
        other content under the id is AlreadyExists). The options are
        :func:`schedule_definition`'s: ``cron`` and/or ``every``, ``tz``, ``dst``, ``start``,
        ``end``, ``exclude``, ``jitter``, ``max_runs``, ``overlap``, ``catchup_window``,
        ``coalesce``, ``pause_on_failure``, ``labels``, and the action's ``args``, ``kwargs``,
        ``queue``, ``priority``, ``task_labels``, ``expires_after``."""
        return self.create_schedule_def(schedule_id, schedule_definition(task, **options))

    def create_schedule_def(self, schedule_id: str, definition: ScheduleDef) -> ScheduleInfo:
        """Create a schedule from a :class:`ScheduleDef`."""
        return self._send(plan_create(schedule_id, definition))

    def get_schedule(self, schedule_id: str) -> ScheduleInfo:
        """One schedule with its next and recent runs."""
        return self._send(plan_get(schedule_id))

    def schedules(
        self, *, labels: Mapping[str, str] | None = None, page_size: int = 100
    ) -> Iterator[ScheduleInfo]:
        """Every schedule (carrying ``labels``), by id, fetching pages as needed."""
        token = ""
        while True:
            found, token = self._send(plan_page(labels, page_size, token))
            yield from found
            if not token:
                return

    def pause(self, schedule_id: str, note: str = "") -> ScheduleInfo:
        """Pause a schedule; its parked runs not yet handed off are removed."""
        return self._send(plan_pause(schedule_id, note))

    def resume(self, schedule_id: str, note: str = "") -> ScheduleInfo:
        """Resume a schedule from now; the paused period makes no runs (backfill it)."""
        return self._send(plan_resume(schedule_id, note))

    def trigger(self, schedule_id: str, overlap: Overlap | str | None = None) -> TaskRecord:
        """Run a schedule's action now, under ``overlap`` or the schedule's policy."""
        return self._send(plan_trigger(schedule_id, overlap))

    def backfill(
        self,
        schedule_id: str,
        start: datetime,
        end: datetime,
        overlap: Overlap | str | None = None,
    ) -> tuple[int, int]:
        """Make the runs of ``[start, end)``; returns (created, already there)."""
        return self._send(plan_backfill(schedule_id, start, end, overlap))

    def delete_schedule(self, schedule_id: str) -> int:
        """Forget a schedule; returns how many parked runs were removed."""
        return self._send(plan_delete(schedule_id))

    def update_task(
        self,
        task_id: str,
        *,
        run_at: datetime | None = None,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
        priority: int | None = None,
    ) -> TaskRecord:
        """Change a parked task; what is given changes. FailedPrecondition once handed off."""
        return self._send(
            plan_update_task(
                task_id, run_at=run_at, args=args, kwargs=kwargs, labels=labels, priority=priority
            )
        )

    def cancel_tasks(
        self,
        *,
        task: str = "",
        labels: Mapping[str, str] | None = None,
        states: Sequence[TaskState | str] = (),
        run_after: datetime | None = None,
        run_before: datetime | None = None,
    ) -> int:
        """Cancel every matching task not yet started; returns how many."""
        return self._send(
            plan_cancel_tasks(
                task=task, labels=labels, states=states, run_after=run_after, run_before=run_before
            )
        )
