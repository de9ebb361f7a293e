"""The Python client: ``with Client.connect("127.0.0.1:50051") as client: ...``.

Every RPC failure is raised as the schedkit error class of its status code, carrying the
server's message and field violations, so ``except SchedkitError`` catches all of them.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

import grpc

from schedkit.client.auth import header_interceptor
from schedkit.client.channel import (
    DEFAULT_TARGET,
    MAX_MESSAGE_BYTES,
    closed_error,
    plan_channel,
)
from schedkit.client.messages import (
    Scheduled,
    TaskQuery,
    make_spec,
    page_from_proto,
    schedule_request,
    scheduled_from_proto,
    spec_batches,
    still_waiting,
    task_filter,
    task_types_from_proto,
)
from schedkit.client.schedules import ScheduleMethods
from schedkit.client.status import error_from_rpc
from schedkit.client.stream import stream_batches
from schedkit.model import ScheduleResult, TaskRecord, TaskSpec, TaskState, TaskType
from schedkit.timeutil import DstPolicy
from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.v1 import schedule_service_pb2_grpc as pb_grpc
from schedkit.wire.batches import Batch
from schedkit.wire.convert import task_from_proto
from schedkit.wire.metadata import WATCHING_HEADER

if TYPE_CHECKING:  # pandas only when a DataFrame method is called: workers never load it
    import pandas as pd

    from schedkit.timeutil import PastPolicy

T = TypeVar("T")
# A stream whose server answers no batch for this long is given up (see schedule_batches).
DEFAULT_STALL_TIMEOUT = 60.0
# Kept importable from here: the scheduler and older callers read them from this module.
__all__ = [
    "DEFAULT_STALL_TIMEOUT",
    "DEFAULT_TARGET",
    "MAX_MESSAGE_BYTES",
    "Client",
    "Scheduled",
    "task_filter",
]


class Client(ScheduleMethods):
    """A connection to a schedkit server. Use :meth:`connect`; close it, or use ``with``.
    Recurring schedules and edits (``create_schedule``, ``pause``, ``update_task``...) come
    from :class:`schedkit.client.schedules.ScheduleMethods`."""

    def __init__(self, channel: grpc.Channel, *, timeout: float | None = 30.0) -> None:
        self._channel = channel
        self._service = pb_grpc.ScheduleServiceStub(channel)
        self._closed = False
        self.timeout = timeout

    @classmethod
    def connect(
        cls,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = 30.0,
        wait_ready: float | None = 10.0,
        token: str | None = None,
        tls: bool | None = None,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> Client:
        """Open a channel to ``target``; wait up to ``wait_ready`` seconds for it (None: don't).

        ``token`` is sent as a bearer token; None reads SCHEDKIT_TOKEN or SCHEDKIT_TOKEN_FILE
        (first line), '' sends none. TLS is on when ``tls`` is True or a CA or client
        certificate is given (``tls_ca`` None reads SCHEDKIT_TLS_CA; system roots otherwise).
        """
        plan = plan_channel(
            target,
            token=token,
            tls=tls,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            max_message_bytes=max_message_bytes,
        )
        if plan.credentials is not None:
            channel = grpc.secure_channel(target, plan.credentials, options=plan.options)
        else:
            channel = grpc.insecure_channel(target, options=plan.options)
        if wait_ready is not None:
            try:
                grpc.channel_ready_future(channel).result(timeout=wait_ready)
            except grpc.FutureTimeoutError as exc:
                channel.close()
                raise plan.not_ready(wait_ready) from exc
        if plan.metadata:
            channel = grpc.intercept_channel(channel, header_interceptor(plan.metadata))
        return cls(channel, timeout=timeout)

    def close(self) -> None:
        """Close the channel."""
        self._closed = True
        self._channel.close()

    @property
    def _stub(self) -> pb_grpc.ScheduleServiceStub:
        # grpc raises a bare ValueError on a closed channel; callers catch SchedkitError.
        if self._closed:
            raise closed_error()
        return self._service

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, method: Callable[..., T], request: Any) -> T:
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc

    # -- scheduling -------------------------------------------------------------------------

    def schedule(
        self,
        task: str,
        *args: Any,
        run_at: datetime | str | timedelta,
        tz: str | tzinfo | None = None,
        dst: DstPolicy = "raise",
        kwargs: Mapping[str, Any] | None = None,
        key: str = "",
        queue: str = "",
        priority: int | None = None,
        labels: Mapping[str, str] | None = None,
        expires_after: timedelta | None = None,
    ) -> TaskRecord:
        """Schedule ``task(*args, **kwargs)`` at ``run_at`` and return the stored task.

        ``run_at`` is an aware datetime, a naive one read in ``tz``, an ISO string, or a
        timedelta from now. Re-sending the same ``key`` returns the existing task.
        """
        spec = make_spec(
            task,
            args,
            run_at=run_at,
            tz=tz,
            dst=dst,
            kwargs=kwargs,
            key=key,
            queue=queue,
            priority=priority,
            labels=labels,
            expires_after=expires_after,
        )
        return self.schedule_spec(spec).task

    def schedule_spec(self, spec: TaskSpec) -> Scheduled:
        """Schedule one TaskSpec; say whether it was created or already existed."""
        response = self._call(self._stub.ScheduleTask, schedule_request(spec))
        return scheduled_from_proto(response)

    def schedule_many(
        self,
        specs: Iterable[TaskSpec],
        *,
        batch_size: int = 1000,
        max_in_flight: int = 4,
        stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
    ) -> Iterator[ScheduleResult]:
        """Stream specs in batches over one ScheduleTasks call; yield one result per spec,
        in order. At most ``max_in_flight`` batches wait for their answer at any time; see
        :meth:`schedule_batches` for ``stall_timeout``."""

        return self.schedule_batches(
            spec_batches(specs, batch_size),
            max_in_flight=max_in_flight,
            stall_timeout=stall_timeout,
        )

    def schedule_batches(
        self,
        batches: Iterable[Batch],
        *,
        max_in_flight: int = 4,
        stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
    ) -> Iterator[ScheduleResult]:
        """Stream ready-made batches (specs or columns) over one ScheduleTasks call; yield one
        result per item of every batch, in order, local errors in their places. At most
        ``max_in_flight`` batches wait for their answer at any time.

        A server that keeps the stream open but answers no batch for ``stall_timeout``
        seconds (hung, or its store blocked) ends the call with Unavailable, which a caller
        may retry: re-sending keyed tasks is safe. None waits for ever.
        """
        return stream_batches(
            self._stub, batches, max_in_flight=max_in_flight, stall_timeout=stall_timeout
        )

    # -- reading and cancelling -------------------------------------------------------------

    def get(self, task_id: str) -> TaskRecord:
        """One task by id."""
        response = self._call(self._stub.GetTask, pb.GetTaskRequest(id=task_id))
        return task_from_proto(response.task)

    def tasks_page(
        self,
        *,
        states: Sequence[TaskState | str] = (),
        task: str = "",
        labels: Mapping[str, str] | None = None,
        run_after: datetime | None = None,
        run_before: datetime | None = None,
        page_size: int = 100,
        page_token: str = "",
    ) -> tuple[list[TaskRecord], str]:
        """One page of tasks by run time, and the next page's token ('' at the end)."""
        query = TaskQuery(states, task, labels, run_after, run_before)
        response = self._call(self._stub.ListTasks, query.page_request(page_size, page_token))
        return page_from_proto(response)

    def tasks(
        self,
        *,
        states: Sequence[TaskState | str] = (),
        task: str = "",
        labels: Mapping[str, str] | None = None,
        run_after: datetime | None = None,
        run_before: datetime | None = None,
        page_size: int = 500,
    ) -> Iterator[TaskRecord]:
        """Every matching task by run time, fetching pages as needed."""
        token = ""
        while True:
            tasks, token = self.tasks_page(
                states=states,
                task=task,
                labels=labels,
                run_after=run_after,
                run_before=run_before,
                page_size=page_size,
                page_token=token,
            )
            yield from tasks
            if not token:
                return

    def tasks_frame(
        self,
        *,
        states: Sequence[TaskState | str] = (),
        task: str = "",
        labels: Mapping[str, str] | None = None,
        run_after: datetime | None = None,
        run_before: datetime | None = None,
        tz: str | tzinfo = "UTC",
        limit: int | None = None,
    ) -> pd.DataFrame:
        """Matching tasks as a DataFrame by run time, datetime columns tz-aware in ``tz``.

        Columns: see :data:`schedkit.timetable.frames.TASK_COLUMNS`. ``limit`` stops after
        that many.
        """
        records = self.tasks(
            states=states,
            task=task,
            labels=labels,
            run_after=run_after,
            run_before=run_before,
            page_size=min(limit, 1000) if limit else 500,
        )
        from schedkit.timetable import frames

        return frames.tasks_frame(itertools.islice(records, limit), tz=tz)

    def schedule_frame(
        self,
        frame: pd.DataFrame,
        *,
        tz: str | tzinfo | None = None,
        dst: DstPolicy = "raise",
        past: PastPolicy = "skip",
        horizon: timedelta = timedelta(days=7),
        source: str = "",
    ) -> pd.DataFrame:
        """Schedule a timetable DataFrame; return its runs with ``outcome``, ``error``,
        ``column`` and ``id`` first, one row per run (bad rows included, never raised).

        A naive time on a row without a ``tz`` cell needs ``tz`` (``tz="UTC"`` if UTC is
        meant); without it the row is refused, never read as UTC."""
        from schedkit.timetable import frames
        from schedkit.timetable.options import TimetableOptions

        options = TimetableOptions(tz=tz, dst=dst, past=past, horizon=horizon, source=source)
        return frames.schedule_frame(self, frame, options)

    def cancel(self, task_id: str) -> TaskRecord:
        """Cancel a task that has not started; returns it, CANCELLED."""
        response = self._call(self._stub.CancelTask, pb.CancelTaskRequest(id=task_id))
        return task_from_proto(response.task)

    def watch(
        self,
        *,
        states: Sequence[TaskState | str] = (),
        task: str = "",
        labels: Mapping[str, str] | None = None,
        ids: Sequence[str] = (),
        timeout: float | None = None,
    ) -> Generator[TaskRecord, None, None]:
        """Tasks as their state changes, from the moment this returns; close it to end the call.

        ``timeout`` ends the watch quietly after that many seconds.
        """
        request = TaskQuery(states, task, labels).watch_request(ids)
        call = self._stub.WatchTasks(request, timeout=timeout)
        try:
            # The server sends its headers once its starting point is fixed; a call refused
            # before that (no token, bad filter) ends with no header and a status instead.
            headers = dict(call.initial_metadata() or ())
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        if WATCHING_HEADER not in headers and call.code() is not grpc.StatusCode.OK:
            raise error_from_rpc(cast(grpc.RpcError, call))  # the call is its own error
        return self._changes(call)

    @staticmethod
    def _changes(call: Any) -> Generator[TaskRecord, None, None]:
        try:
            for response in call:
                yield task_from_proto(response.task)
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
                raise error_from_rpc(exc) from exc
        finally:
            call.cancel()

    def wait_for(
        self, task_id: str, states: Iterable[TaskState | str], *, timeout: float = 30.0
    ) -> TaskRecord:
        """Return the task once it is in one of ``states``; Unavailable after ``timeout``."""
        wanted = {TaskState(s) for s in states}
        with contextlib.closing(self.watch(ids=[task_id], timeout=timeout)) as changes:
            task = self.get(task_id)  # after the watch started: no change is missed
            if task.state in wanted:
                return task
            for task in changes:
                if task.state in wanted:
                    return task
        task = self.get(task_id)
        if task.state in wanted:
            return task
        raise still_waiting(task_id, task.state, timeout)

    def task_types(self) -> list[TaskType]:
        """The tasks the server allows, with signature and docstring line."""
        response = self._call(self._stub.ListTaskTypes, pb.ListTaskTypesRequest())
        return task_types_from_proto(response)
