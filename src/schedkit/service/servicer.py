"""The ScheduleService servicer: messages in, domain calls, messages out. Nothing else."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc

from schedkit.errors import InvalidArgument, SchedkitError
from schedkit.model import Outcome, ScheduleResult, TaskRows, TaskSpec
from schedkit.service.edits import TaskEdits
from schedkit.service.recurring import Recurring
from schedkit.service.schedule_rpcs import ScheduleRpcs
from schedkit.service.schedules import (
    MAX_LABELS,
    BatchFields,
    PreparedBatch,
    Schedules,
    created_record,
)
from schedkit.service.watch import ChangeFeed
from schedkit.store.aio import AsyncStore
from schedkit.store.query import TaskQuery
from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.v1 import schedule_service_pb2_grpc as pb_grpc
from schedkit.wire.cache import TemplateCache
from schedkit.wire.convert import (
    datetime_to_timestamp,
    outcome_to_proto,
    rows_from_columns,
    spec_from_proto,
    state_from_proto,
    task_to_proto,
    task_type_to_proto,
    timestamp_to_datetime,
    too_large,
)
from schedkit.wire.metadata import WATCHING_HEADER

R = TypeVar("R")
SPEC_FIELDS = BatchFields.of_prefix("specs[{}].")
# Watching more tasks by id than this is better done by label.
MAX_FILTER_IDS = 10_000


_End = object()  # the request stream ended


class ScheduleService(ScheduleRpcs, pb_grpc.ScheduleServiceServicer):
    """gRPC face of :class:`schedkit.schedules.Schedules`, on the asyncio server.

    Store calls are blocking (redis-py, Lua scripts): they run on ``executor``, a bounded
    pool, while the event loop keeps answering. Watching needs no thread at all: it reads
    through ``feed`` (redis-py's asyncio client).
    """

    def __init__(
        self, schedules: Schedules, executor: Executor, store: AsyncStore, feed: ChangeFeed
    ) -> None:
        self.schedules = schedules
        self.recurring = Recurring(schedules)
        self.edits = TaskEdits(schedules)
        self._executor = executor
        self._store = store
        self._feed = feed
        # Column templates already converted, shared by all streams (see rows_from_columns).
        self._known_templates = TemplateCache.for_settings(schedules.settings)

    async def _call(self, function: Callable[..., R], *args: Any) -> R:
        """``function(*args)`` on the store executor."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    def _filter(self, msg: pb.TaskFilter) -> TaskQuery:
        return query_from_proto(msg)

    async def ScheduleTask(
        self, request: pb.ScheduleTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ScheduleTaskResponse:
        """Schedule one task: checked on the loop (one spec is microseconds), stored awaited."""
        # Its size first: converting a spec of megabytes would hold the loop for every call.
        oversized = too_large(request.spec, "spec.", self._known_templates.max_template_bytes)
        if oversized is not None:
            raise oversized
        spec = spec_from_proto(request.spec)
        now = self.schedules.clock()
        batch = self.schedules.prepare_one(spec, now)
        stored = await self._store.schedule_new(
            batch.new, window_seconds=self.schedules.settings.handoff_window, now=now
        )
        result = self.schedules.settle(batch, stored)[0]
        if result.error is not None:
            raise result.error
        if result.outcome is Outcome.CREATED:
            task = created_record(spec, result.id, now)
        else:
            task = await self._store.get(result.id)
        return pb.ScheduleTaskResponse(
            task=task_to_proto(task), outcome=outcome_to_proto(result.outcome)
        )

    async def ScheduleTasks(
        self,
        request_iterator: AsyncIterator[pb.ScheduleTasksRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.ScheduleTasksResponse]:
        """Schedule batches; answer each with its per-item results in order.

        A reader reads and prepares the next batch while this one waits for the store to
        take the last: Python work and Redis work overlap. The reader never waits for an
        answer to be sent, so a caller that sends one batch at a time is served too.
        """
        prepared: asyncio.Queue[PreparedBatch | BaseException | object] = asyncio.Queue(2)

        async def read() -> None:
            try:
                number = 0
                async for request in request_iterator:
                    await prepared.put(await self._call(self._prepare_request, number, request))
                    number += 1
                await prepared.put(_End)
            except Exception as exc:  # raised by the answering side, in order
                await prepared.put(exc)

        reader = asyncio.create_task(read(), name="schedule-tasks-reader")
        try:
            while (batch := await prepared.get()) is not _End:
                if isinstance(batch, BaseException):
                    try:
                        raise batch
                    finally:
                        # This frame would hold the error and its traceback this frame: a
                        # cycle that keeps a refused batch in memory until the collector runs.
                        del batch
                assert isinstance(batch, PreparedBatch)
                results = await self._call(self.schedules.store_prepared, batch)
                yield pb.ScheduleTasksResponse(results=[_result_to_proto(r) for r in results])
        finally:
            reader.cancel()

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
        max_bytes = self._known_templates.max_template_bytes
        for index, msg in enumerate(request.specs):
            prefix = f"specs[{index}]."
            try:
                specs.append(too_large(msg, prefix, max_bytes) or spec_from_proto(msg, prefix))
            except InvalidArgument as exc:
                specs.append(exc)
        return self.schedules.prepare_rows(TaskRows.of_specs(specs), fields=SPEC_FIELDS)

    async def GetTask(
        self, request: pb.GetTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetTaskResponse:
        """One task."""
        task = await self._call(self.schedules.get, request.id)
        return pb.GetTaskResponse(task=task_to_proto(task))

    async def ListTasks(
        self, request: pb.ListTasksRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListTasksResponse:
        """A page of tasks by run time."""
        query = query_from_proto(request.filter)
        if query.ids:
            raise InvalidArgument.for_field("filter.ids", "use GetTask for tasks by id")
        tasks, token = await self._call(
            functools.partial(
                self.schedules.page,
                query,
                page_size=request.page_size,
                page_token=request.page_token,
            )
        )
        return pb.ListTasksResponse(tasks=[task_to_proto(t) for t in tasks], next_page_token=token)

    async def CancelTask(
        self, request: pb.CancelTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CancelTaskResponse:
        """Cancel a task that has not started."""
        task = await self._call(self.schedules.cancel, request.id)
        return pb.CancelTaskResponse(task=task_to_proto(task))

    async def WatchTasks(
        self, request: pb.WatchTasksRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchTasksResponse]:
        """Stream state changes until the client goes away (the call is then cancelled)."""
        query = query_from_proto(request.filter)
        cursor = await self._feed.latest()
        # Headers tell the client the starting point is fixed: nothing after this is missed.
        await context.send_initial_metadata(((WATCHING_HEADER, "1"),))
        async for task, change in self._feed.follow(query, cursor):
            yield pb.WatchTasksResponse(
                task=task_to_proto(task), change_time=datetime_to_timestamp(change.at)
            )

    async def ListTaskTypes(
        self, request: pb.ListTaskTypesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListTaskTypesResponse:
        """The tasks that may be scheduled."""
        types = await self._call(self.schedules.task_types)
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
