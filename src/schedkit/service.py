"""The ScheduleService servicer: messages in, domain calls, messages out. Nothing else."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from schedkit.cache import TemplateCache
from schedkit.convert import (
    datetime_to_timestamp,
    outcome_to_proto,
    rows_from_columns,
    spec_from_proto,
    state_from_proto,
    task_to_proto,
    task_type_to_proto,
    timestamp_to_datetime,
)
from schedkit.errors import InvalidArgument, SchedkitError
from schedkit.model import Outcome, ScheduleResult, TaskRows, TaskSpec
from schedkit.readahead import ReadAhead
from schedkit.schedules import MAX_LABELS, BatchFields, PreparedBatch, Schedules
from schedkit.store import TaskQuery
from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.v1 import schedule_service_pb2_grpc as pb_grpc

WATCHING_HEADER = "schedkit-watching"
SPEC_FIELDS = BatchFields.of_prefix("specs[{}].")
# Watching more tasks by id than this is better done by label.
MAX_FILTER_IDS = 10_000


class ScheduleService(pb_grpc.ScheduleServiceServicer):
    """gRPC face of :class:`schedkit.schedules.Schedules`."""

    def __init__(self, schedules: Schedules) -> None:
        self.schedules = schedules
        # Column templates already converted, shared by all streams (see rows_from_columns).
        self._known_templates = TemplateCache.for_settings(schedules.settings)

    def ScheduleTask(
        self, request: pb.ScheduleTaskRequest, context: grpc.ServicerContext
    ) -> pb.ScheduleTaskResponse:
        """Schedule one task."""
        task, outcome = self.schedules.schedule_and_get(spec_from_proto(request.spec))
        return pb.ScheduleTaskResponse(task=task_to_proto(task), outcome=outcome_to_proto(outcome))

    def ScheduleTasks(
        self, request_iterator: Iterator[pb.ScheduleTasksRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.ScheduleTasksResponse]:
        """Schedule batches; answer each with its per-item results in order.

        A thread of the stream's own reads and prepares the next batch while this one waits
        for the store to take the last: Python work and Redis work overlap.
        """
        batches = (
            self._prepare_request(number, request)
            for number, request in enumerate(request_iterator)
        )
        for batch in ReadAhead(batches, name="schedule-tasks-reader"):
            results = self.schedules.store_prepared(batch)
            yield pb.ScheduleTasksResponse(results=[_result_to_proto(r) for r in results])

    def _prepare_request(self, number: int, request: pb.ScheduleTasksRequest) -> PreparedBatch:
        """One batch of ScheduleTasks, as specs or as columns, checked and encoded."""
        limit = self.schedules.settings.max_batch
        if request.HasField("columns"):
            if request.specs:
                raise InvalidArgument.for_field(
                    f"batch {number}: specs", "send a batch as specs or as columns, not both"
                )
            size, field = len(request.columns.template_index), "columns"
        else:
            size, field = len(request.specs), "specs"
        if not size:
            raise InvalidArgument.for_field(f"batch {number}: {field}", "empty batch")
        if size > limit:
            raise InvalidArgument.for_field(
                f"batch {number}: {field}",
                f"{size} tasks, more than {limit} (SCHEDKIT_MAX_BATCH)",
            )
        if field == "columns":
            rows = rows_from_columns(
                request.columns, batch=f"batch {number}: ", known=self._known_templates
            )
            return self.schedules.prepare_rows(rows)
        specs: list[TaskSpec | Exception] = []
        for index, msg in enumerate(request.specs):
            try:
                specs.append(spec_from_proto(msg, prefix=f"specs[{index}]."))
            except InvalidArgument as exc:
                specs.append(exc)
        return self.schedules.prepare_rows(TaskRows.of_specs(specs), fields=SPEC_FIELDS)

    def GetTask(
        self, request: pb.GetTaskRequest, context: grpc.ServicerContext
    ) -> pb.GetTaskResponse:
        """One task."""
        return pb.GetTaskResponse(task=task_to_proto(self.schedules.get(request.id)))

    def ListTasks(
        self, request: pb.ListTasksRequest, context: grpc.ServicerContext
    ) -> pb.ListTasksResponse:
        """A page of tasks by run time."""
        query = query_from_proto(request.filter)
        if query.ids:
            raise InvalidArgument.for_field("filter.ids", "use GetTask for tasks by id")
        tasks, token = self.schedules.page(
            query, page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListTasksResponse(tasks=[task_to_proto(t) for t in tasks], next_page_token=token)

    def CancelTask(
        self, request: pb.CancelTaskRequest, context: grpc.ServicerContext
    ) -> pb.CancelTaskResponse:
        """Cancel a task that has not started."""
        return pb.CancelTaskResponse(task=task_to_proto(self.schedules.cancel(request.id)))

    def WatchTasks(
        self, request: pb.WatchTasksRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.WatchTasksResponse]:
        """Stream state changes until the client goes away."""
        query = query_from_proto(request.filter)
        changes = self.schedules.watch(query, is_active=context.is_active)
        # Headers tell the client the starting point is fixed: nothing after this is missed.
        context.send_initial_metadata(((WATCHING_HEADER, "1"),))
        for task, change in changes:
            yield pb.WatchTasksResponse(
                task=task_to_proto(task), change_time=datetime_to_timestamp(change.at)
            )

    def ListTaskTypes(
        self, request: pb.ListTaskTypesRequest, context: grpc.ServicerContext
    ) -> pb.ListTaskTypesResponse:
        """The tasks that may be scheduled."""
        types = self.schedules.task_types()
        return pb.ListTaskTypesResponse(task_types=[task_type_to_proto(t) for t in types])


def query_from_proto(msg: pb.TaskFilter) -> TaskQuery:
    """A TaskQuery from a TaskFilter, naming the bad field if any."""
    if len(msg.labels) > MAX_LABELS:
        raise InvalidArgument.for_field(
            "filter.labels", f"{len(msg.labels)} labels, more than {MAX_LABELS}"
        )
    if len(msg.ids) > MAX_FILTER_IDS:
        raise InvalidArgument.for_field(
            "filter.ids", f"{len(msg.ids)} ids, more than {MAX_FILTER_IDS}"
        )
    states = frozenset(
        state_from_proto(value, f"filter.states[{i}]") for i, value in enumerate(msg.states)
    )
    return TaskQuery(
        states=states,
        task=msg.task,
        labels=tuple(sorted(msg.labels.items())),
        run_after=timestamp_to_datetime(msg.run_after, "filter.run_after")
        if msg.HasField("run_after")
        else None,
        run_before=timestamp_to_datetime(msg.run_before, "filter.run_before")
        if msg.HasField("run_before")
        else None,
        ids=frozenset(msg.ids),
    )


_OUTCOMES = {outcome: outcome_to_proto(outcome) for outcome in Outcome}


def _result_to_proto(result: ScheduleResult) -> pb.ScheduleResult:
    msg = pb.ScheduleResult(id=result.id, outcome=_OUTCOMES[result.outcome])
    if result.error is not None:
        error = result.error
        if isinstance(error, SchedkitError):
            field = error.violations[0].field if error.violations else ""
            msg.error.CopyFrom(
                pb.ItemError(code=error.code.value[0], field=field, message=error.message)
            )
        else:
            msg.error.CopyFrom(
                pb.ItemError(code=grpc.StatusCode.INTERNAL.value[0], message="internal error")
            )
    return msg
