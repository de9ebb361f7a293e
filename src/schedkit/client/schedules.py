"""The client's schedule and edit methods: recurring schedules kept on the server, moving a
parked task, cancelling by filter. A mixin of :class:`schedkit.client.client.Client`, which
provides ``_call`` and ``_stub``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

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


class ScheduleMethods:
    """Schedules and edits; see docs/schedules.md."""

    def _call(self, method: Callable[..., T], request: Any) -> T:
        raise NotImplementedError  # the Client's

    @property
    def _stub(self) -> pb_grpc.ScheduleServiceStub:
        raise NotImplementedError  # the Client's

    def create_schedule(
        self,
        schedule_id: str,
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
        labels: Mapping[str, str] | None = None,
        queue: str = "",
        priority: int | None = None,
        task_labels: Mapping[str, str] | None = None,
        expires_after: timedelta | None = None,
    ) -> ScheduleInfo:
        """Create a recurring schedule under ``schedule_id`` (the same call again is a no-op;
        other content under the id is AlreadyExists)."""
        definition = ScheduleDef(
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
        )
        return self.create_schedule_def(schedule_id, definition)

    def create_schedule_def(self, schedule_id: str, definition: ScheduleDef) -> ScheduleInfo:
        """Create a schedule from a :class:`ScheduleDef`."""
        request = pb.CreateScheduleRequest(
            schedule_id=schedule_id, schedule=definition_to_proto(definition)
        )
        response = self._call(self._stub.CreateSchedule, request)
        outcome = outcome_from_proto(response.outcome).value
        return schedule_from_proto(response.schedule, outcome)

    def get_schedule(self, schedule_id: str) -> ScheduleInfo:
        """One schedule with its next and recent runs."""
        response = self._call(self._stub.GetSchedule, pb.GetScheduleRequest(id=schedule_id))
        return schedule_from_proto(response.schedule)

    def schedules(
        self, *, labels: Mapping[str, str] | None = None, page_size: int = 100
    ) -> Iterator[ScheduleInfo]:
        """Every schedule (carrying ``labels``), by id, fetching pages as needed."""
        token = ""
        while True:
            request = pb.ListSchedulesRequest(
                labels=dict(labels or {}), page_size=page_size, page_token=token
            )
            response = self._call(self._stub.ListSchedules, request)
            yield from (schedule_from_proto(s) for s in response.schedules)
            token = response.next_page_token
            if not token:
                return

    def pause(self, schedule_id: str, note: str = "") -> ScheduleInfo:
        """Pause a schedule; its parked runs not yet handed off are removed."""
        request = pb.PauseScheduleRequest(id=schedule_id, note=note)
        return schedule_from_proto(self._call(self._stub.PauseSchedule, request).schedule)

    def resume(self, schedule_id: str, note: str = "") -> ScheduleInfo:
        """Resume a schedule from now; the paused period makes no runs (backfill it)."""
        request = pb.ResumeScheduleRequest(id=schedule_id, note=note)
        return schedule_from_proto(self._call(self._stub.ResumeSchedule, request).schedule)

    def trigger(self, schedule_id: str, overlap: Overlap | str | None = None) -> TaskRecord:
        """Run a schedule's action now, under ``overlap`` or the schedule's policy."""
        request = pb.TriggerScheduleRequest(id=schedule_id, overlap=_overlap(overlap))
        return task_from_proto(self._call(self._stub.TriggerSchedule, request).task)

    def backfill(
        self,
        schedule_id: str,
        start: datetime,
        end: datetime,
        overlap: Overlap | str | None = None,
    ) -> tuple[int, int]:
        """Make the runs of ``[start, end)``; returns (created, already there)."""
        request = pb.BackfillScheduleRequest(
            id=schedule_id,
            start_time=datetime_to_timestamp(start),
            end_time=datetime_to_timestamp(end),
            overlap=_overlap(overlap),
        )
        response = self._call(self._stub.BackfillSchedule, request)
        return response.created_count, response.existing_count

    def delete_schedule(self, schedule_id: str) -> int:
        """Forget a schedule; returns how many parked runs were removed."""
        request = pb.DeleteScheduleRequest(id=schedule_id)
        return self._call(self._stub.DeleteSchedule, request).cancelled_count

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
        msg = spec_to_proto(spec)
        request = pb.UpdateTaskRequest(id=task_id, spec=msg)
        request.update_mask.paths.extend(path for path, set_ in given.items() if set_)
        return task_from_proto(self._call(self._stub.UpdateTask, request).task)

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
        return self._call(self._stub.CancelTasks, request).cancelled_count
