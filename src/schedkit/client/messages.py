"""Requests built from the clients' keyword arguments, and their responses read back: the
pure half of every client method, shared by the blocking and the asyncio client."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Any

from schedkit.errors import SchedkitError, Unavailable
from schedkit.model import Outcome, TaskRecord, TaskSpec, TaskState, TaskType
from schedkit.timeutil import DstPolicy, to_instant
from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.wire.batches import Batch, checked_spec_to_proto
from schedkit.wire.convert import (
    datetime_to_timestamp,
    outcome_from_proto,
    state_to_proto,
    task_from_proto,
)


@dataclass(frozen=True)
class Scheduled:
    """What ScheduleTask returned: the task, and whether it was created or already there."""

    task: TaskRecord
    outcome: Outcome


@dataclass(frozen=True)
class TaskQuery:
    """The filter arguments that ``tasks``, ``tasks_page``, ``tasks_frame`` and ``watch`` share."""

    states: Sequence[TaskState | str] = ()
    task: str = ""
    labels: Mapping[str, str] | None = None
    run_after: datetime | None = None
    run_before: datetime | None = None

    def filter(self) -> pb.TaskFilter:
        """The TaskFilter message."""
        return task_filter(self.states, self.task, self.labels, self.run_after, self.run_before)

    def page_request(self, page_size: int, page_token: str) -> pb.ListTasksRequest:
        """One ListTasks request."""
        return pb.ListTasksRequest(filter=self.filter(), page_size=page_size, page_token=page_token)

    def watch_request(self, ids: Sequence[str]) -> pb.WatchTasksRequest:
        """A WatchTasks request (run times are not part of a watch filter)."""
        msg = pb.WatchTasksRequest(
            filter=task_filter(self.states, self.task, self.labels, None, None)
        )
        msg.filter.ids.extend(ids)
        return msg


def task_filter(
    states: Sequence[TaskState | str],
    task: str,
    labels: Mapping[str, str] | None,
    run_after: datetime | None,
    run_before: datetime | None,
) -> pb.TaskFilter:
    """A TaskFilter message from keyword arguments."""
    msg = pb.TaskFilter(
        states=[state_to_proto(TaskState(s)) for s in states],
        task=task,
        labels=dict(labels or {}),
    )
    if run_after is not None:
        msg.run_after.CopyFrom(datetime_to_timestamp(run_after))
    if run_before is not None:
        msg.run_before.CopyFrom(datetime_to_timestamp(run_before))
    return msg


def make_spec(
    task: str,
    args: Sequence[Any],
    *,
    run_at: datetime | str | timedelta,
    tz: str | tzinfo | None,
    dst: DstPolicy,
    kwargs: Mapping[str, Any] | None,
    key: str,
    queue: str,
    priority: int | None,
    labels: Mapping[str, str] | None,
    expires_after: timedelta | None,
) -> TaskSpec:
    """The TaskSpec of a ``schedule(task, *args, run_at=…, …)`` call."""
    return TaskSpec(
        task=task,
        run_at=to_instant(run_at, tz=tz, dst=dst),
        args=list(args),
        kwargs=dict(kwargs or {}),
        key=key,
        queue=queue,
        priority=priority,
        labels=dict(labels or {}),
        expires_after=expires_after,
    )


def schedule_request(spec: TaskSpec) -> pb.ScheduleTaskRequest:
    """A ScheduleTask request; client-side mistakes raise InvalidArgument naming the field."""
    return pb.ScheduleTaskRequest(spec=checked_spec_to_proto(spec))


def scheduled_from_proto(response: pb.ScheduleTaskResponse) -> Scheduled:
    """The task and outcome of a ScheduleTask answer."""
    return Scheduled(task_from_proto(response.task), outcome_from_proto(response.outcome))


def task_types_from_proto(response: pb.ListTaskTypesResponse) -> list[TaskType]:
    """The task types of a ListTaskTypes answer."""
    return [TaskType(t.name, t.signature, t.doc) for t in response.task_types]


def page_from_proto(response: pb.ListTasksResponse) -> tuple[list[TaskRecord], str]:
    """The tasks of a ListTasks answer and the next page's token ('' at the end)."""
    return [task_from_proto(t) for t in response.tasks], response.next_page_token


def spec_batch(specs: Sequence[TaskSpec]) -> Batch:
    """One ScheduleTasks batch: the specs that pass the client-side check, and the local error
    of each that does not, in its place."""
    items = [_checked_or_error(spec, index) for index, spec in enumerate(specs)]
    local_errors = [item if isinstance(item, SchedkitError) else None for item in items]
    to_send = [item for item in items if not isinstance(item, SchedkitError)]
    return Batch(pb.ScheduleTasksRequest(specs=to_send), local_errors)


def spec_batches(specs: Iterable[TaskSpec], batch_size: int) -> Iterator[Batch]:
    """``specs`` in batches of ``batch_size`` (see :func:`spec_batch`)."""
    iterator = iter(specs)
    while batch := list(itertools.islice(iterator, batch_size)):
        yield spec_batch(batch)


async def spec_batches_async(
    specs: Iterable[TaskSpec] | AsyncIterable[TaskSpec], batch_size: int
) -> AsyncIterator[Batch]:
    """:func:`spec_batches` of a plain or an asynchronous iterable."""
    if not isinstance(specs, AsyncIterable):
        for batch in spec_batches(specs, batch_size):
            yield batch
        return
    chunk: list[TaskSpec] = []
    async for spec in specs:
        chunk.append(spec)
        if len(chunk) == batch_size:
            yield spec_batch(chunk)
            chunk = []
    if chunk:
        yield spec_batch(chunk)


def _checked_or_error(spec: TaskSpec, index: int) -> pb.TaskSpec | SchedkitError:
    try:
        return checked_spec_to_proto(spec, prefix=f"specs[{index}].")
    except SchedkitError as exc:
        return exc


def still_waiting(task_id: str, state: TaskState, timeout: float) -> Unavailable:
    """What ``wait_for`` raises when the task did not reach a wanted state in time."""
    return Unavailable(f"task {task_id} still {state.value} after {timeout:g}s")
