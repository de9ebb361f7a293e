"""The schedule and edit RPCs of ScheduleService: messages in, domain calls, messages out.

A mixin of :class:`schedkit.service.servicer.ScheduleService`, which provides ``_call`` (the
store executor), ``recurring`` and ``edits``; kept apart so the task RPCs stay one screen.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterable
from typing import Any, TypeVar

import grpc

from schedkit.errors import InvalidArgument
from schedkit.recurring import ScheduleRecord
from schedkit.service.edits import UPDATABLE, TaskEdits
from schedkit.service.recurring import Recurring
from schedkit.store.query import TaskQuery
from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.wire.convert import (
    outcome_to_proto,
    spec_from_proto,
    task_to_proto,
    timestamp_to_datetime,
)
from schedkit.wire.schedules import definition_from_proto, overlap_from_proto, schedule_to_proto

R = TypeVar("R")
Context = grpc.aio.ServicerContext[Any, Any]
#: The parts of a schedule UpdateSchedule may replace.
SCHEDULE_PARTS = ("spec", "action", "policies", "labels")


def mask_paths(given: Iterable[str], allowed: Collection[str]) -> list[str]:
    """The paths of an update mask, each one of ``allowed``; InvalidArgument naming the
    first path that is not, or the mask when it names nothing."""
    paths = list(given)
    if not paths:
        raise InvalidArgument.for_field("update_mask", f"name what changes: {', '.join(allowed)}")
    for i, path in enumerate(paths):
        if path not in allowed:
            raise InvalidArgument.for_field(
                f"update_mask.paths[{i}]",
                f"{path!r} cannot be updated; one of {', '.join(allowed)}",
            )
    return paths


class ScheduleRpcs:
    """CreateSchedule ... DeleteSchedule, UpdateTask and CancelTasks."""

    recurring: Recurring
    edits: TaskEdits

    async def _call(self, function: Callable[..., R], *args: Any) -> R:
        raise NotImplementedError  # the servicer's

    def _filter(self, msg: pb.TaskFilter) -> TaskQuery:
        raise NotImplementedError  # the servicer's

    def _to_proto(self, record: ScheduleRecord) -> pb.Schedule:
        return schedule_to_proto(record, self.recurring.next_times(record))

    async def CreateSchedule(
        self, request: pb.CreateScheduleRequest, context: Context
    ) -> pb.CreateScheduleResponse:
        """Create, or find the same schedule under its id."""
        definition = definition_from_proto(request.schedule)
        record, outcome = await self._call(self.recurring.create, request.schedule_id, definition)
        return pb.CreateScheduleResponse(
            schedule=self._to_proto(record), outcome=outcome_to_proto(outcome)
        )

    async def GetSchedule(
        self, request: pb.GetScheduleRequest, context: Context
    ) -> pb.GetScheduleResponse:
        """One schedule with its state."""
        record = await self._call(self.recurring.get, request.id)
        return pb.GetScheduleResponse(schedule=self._to_proto(record))

    async def ListSchedules(
        self, request: pb.ListSchedulesRequest, context: Context
    ) -> pb.ListSchedulesResponse:
        """A page of schedules by id."""
        records, token = await self._call(
            functools.partial(
                self.recurring.page,
                dict(request.labels),
                page_size=request.page_size,
                page_token=request.page_token,
            )
        )
        return pb.ListSchedulesResponse(
            schedules=[self._to_proto(r) for r in records], next_page_token=token
        )

    async def UpdateSchedule(
        self, request: pb.UpdateScheduleRequest, context: Context
    ) -> pb.UpdateScheduleResponse:
        """Replace the parts the mask names."""
        paths = mask_paths(request.update_mask.paths, SCHEDULE_PARTS)
        current = await self._call(self.recurring.get, request.schedule.id)
        merged = schedule_to_proto(current)
        for path in paths:
            merged.ClearField(path)  # type: ignore[arg-type]
            if path == "labels":
                merged.labels.update(request.schedule.labels)
            else:
                getattr(merged, path).CopyFrom(getattr(request.schedule, path))
        definition = definition_from_proto(merged)
        record = await self._call(self.recurring.update, request.schedule.id, definition)
        return pb.UpdateScheduleResponse(schedule=self._to_proto(record))

    async def PauseSchedule(
        self, request: pb.PauseScheduleRequest, context: Context
    ) -> pb.PauseScheduleResponse:
        """Pause; parked runs are removed."""
        record, removed = await self._call(self.recurring.pause, request.id, request.note)
        return pb.PauseScheduleResponse(schedule=self._to_proto(record), cancelled_count=removed)

    async def ResumeSchedule(
        self, request: pb.ResumeScheduleRequest, context: Context
    ) -> pb.ResumeScheduleResponse:
        """Resume from now."""
        record = await self._call(self.recurring.resume, request.id, request.note)
        return pb.ResumeScheduleResponse(schedule=self._to_proto(record))

    async def TriggerSchedule(
        self, request: pb.TriggerScheduleRequest, context: Context
    ) -> pb.TriggerScheduleResponse:
        """One run now."""
        overlap = overlap_from_proto(request.overlap, "overlap")
        task = await self._call(self.recurring.trigger, request.id, overlap)
        return pb.TriggerScheduleResponse(task=task_to_proto(task))

    async def BackfillSchedule(
        self, request: pb.BackfillScheduleRequest, context: Context
    ) -> pb.BackfillScheduleResponse:
        """The runs of a time range, each once."""
        for name in ("start_time", "end_time"):
            if not request.HasField(name):
                raise InvalidArgument.for_field(name, "required: the range to backfill")
        start = timestamp_to_datetime(request.start_time, "start_time")
        end = timestamp_to_datetime(request.end_time, "end_time")
        overlap = overlap_from_proto(request.overlap, "overlap")
        done = await self._call(self.recurring.backfill, request.id, start, end, overlap)
        return pb.BackfillScheduleResponse(created_count=done.created, existing_count=done.existing)

    async def DeleteSchedule(
        self, request: pb.DeleteScheduleRequest, context: Context
    ) -> pb.DeleteScheduleResponse:
        """Forget a schedule; parked runs are removed."""
        removed = await self._call(self.recurring.delete, request.id)
        return pb.DeleteScheduleResponse(cancelled_count=removed)

    async def UpdateTask(
        self, request: pb.UpdateTaskRequest, context: Context
    ) -> pb.UpdateTaskResponse:
        """Change a parked task's fields the mask names."""
        paths = mask_paths(request.update_mask.paths, UPDATABLE)
        # Only the masked fields are read: the rest of spec may be left empty.
        masked = pb.TaskSpec(task=request.spec.task or "-")
        for path in paths:
            if path == "priority":
                if request.spec.HasField("priority"):
                    masked.priority = request.spec.priority
            elif path in ("labels",):
                masked.labels.update(request.spec.labels)
            elif request.spec.HasField(path):  # type: ignore[arg-type]
                getattr(masked, path).CopyFrom(getattr(request.spec, path))
        given = spec_from_proto(masked, "spec.", template="run_time" not in paths)
        changes = {UPDATABLE[path]: getattr(given, UPDATABLE[path]) for path in paths}
        task = await self._call(self.edits.update, request.id, changes)
        return pb.UpdateTaskResponse(task=task_to_proto(task))

    async def CancelTasks(
        self, request: pb.CancelTasksRequest, context: Context
    ) -> pb.CancelTasksResponse:
        """Cancel every matching task that has not started."""
        count = await self._call(self.edits.cancel, self._filter(request.filter))
        return pb.CancelTasksResponse(cancelled_count=count)
