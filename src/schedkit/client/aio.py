"""The asyncio client, on ``grpc.aio``: ``async with Client.connect(target) as client: ...``.

The same methods as the blocking :class:`schedkit.Client`, awaited; ``tasks``, ``watch`` and
``schedule_many`` are async iterators. Requests, answers, errors and credentials come from the
same modules as the blocking client's, so both send and raise the same things.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

import grpc
import grpc.aio

from schedkit.client import aio_stream
from schedkit.client.aio_frames import ThreadBridge, frame_of
from schedkit.client.aio_schedules import AsyncScheduleMethods
from schedkit.client.aio_watch import Watch
from schedkit.client.channel import (
    DEFAULT_TARGET,
    MAX_MESSAGE_BYTES,
    ChannelPlan,
    closed_error,
    plan_channel,
)
from schedkit.client.client import DEFAULT_STALL_TIMEOUT
from schedkit.client.client import Client as BlockingClient
from schedkit.client.messages import (
    Scheduled,
    TaskQuery,
    make_spec,
    page_from_proto,
    schedule_request,
    scheduled_from_proto,
    spec_batches_async,
    still_waiting,
    task_types_from_proto,
)
from schedkit.client.status import error_from_rpc
from schedkit.model import ScheduleResult, TaskRecord, TaskSpec, TaskState, TaskType
from schedkit.timeutil import DstPolicy
from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.v1 import schedule_service_pb2_grpc as pb_grpc
from schedkit.wire.batches import Batch
from schedkit.wire.convert import task_from_proto

if TYPE_CHECKING:  # pandas only when a DataFrame method is called
    import pandas as pd

T = TypeVar("T")


class Client(AsyncScheduleMethods):
    """An asyncio connection to a schedkit server: ``async with Client.connect(...) as c``, or
    ``c = await Client.connect(...)`` and ``await c.close()``. Use it from one event loop."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        timeout: float | None = 30.0,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self._channel = channel
        self._service = pb_grpc.ScheduleServiceStub(channel)
        self._metadata = metadata
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
    ) -> Connecting:
        """Open a channel to ``target``: await the result, or use it in ``async with``.

        The options are :meth:`schedkit.Client.connect`'s: ``wait_ready`` seconds for the
        server (None: don't wait), ``token`` (None reads SCHEDKIT_TOKEN / SCHEDKIT_TOKEN_FILE,
        '' sends none), TLS with ``tls_ca`` / ``tls_cert`` / ``tls_key``.
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
        return Connecting(lambda: cls._open(plan, timeout=timeout, wait_ready=wait_ready))

    @classmethod
    async def _open(
        cls, plan: ChannelPlan, *, timeout: float | None, wait_ready: float | None
    ) -> Client:
        if plan.credentials is not None:
            channel = grpc.aio.secure_channel(plan.target, plan.credentials, options=plan.options)
        else:
            channel = grpc.aio.insecure_channel(plan.target, options=plan.options)
        try:
            if wait_ready is not None:
                await asyncio.wait_for(channel.channel_ready(), wait_ready)
        except TimeoutError as exc:
            await channel.close()
            raise plan.not_ready(wait_ready or 0) from exc
        except BaseException:  # cancelled while waiting: leave no channel behind
            await channel.close()
            raise
        return cls(channel, timeout=timeout, metadata=plan.metadata)

    async def close(self) -> None:
        """Close the channel; calls still running end CANCELLED."""
        self._closed = True
        await self._channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def _stub(self) -> pb_grpc.ScheduleServiceAsyncStub:
        if self._closed:
            raise closed_error()
        return self._service

    async def _call(self, method: Callable[..., Awaitable[T]], request: Any) -> T:
        try:
            return await method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from exc

    # -- scheduling -------------------------------------------------------------------------

    async def schedule(
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
        """Schedule ``task(*args, **kwargs)`` at ``run_at``, as ``schedkit.Client.schedule``."""
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
        return (await self.schedule_spec(spec)).task

    async def schedule_spec(self, spec: TaskSpec) -> Scheduled:
        """Schedule one TaskSpec; say whether it was created or already existed."""
        response = await self._call(self._stub.ScheduleTask, schedule_request(spec))
        return scheduled_from_proto(response)

    def schedule_many(
        self,
        specs: Iterable[TaskSpec] | AsyncIterable[TaskSpec],
        *,
        batch_size: int = 1000,
        max_in_flight: int = 4,
        stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
    ) -> AsyncGenerator[ScheduleResult, None]:
        """Stream specs (a plain or an async iterable) in batches over one ScheduleTasks call;
        yield one result per spec, in order (see :meth:`schedkit.Client.schedule_many`)."""
        return self.schedule_batches(
            spec_batches_async(specs, batch_size),
            max_in_flight=max_in_flight,
            stall_timeout=stall_timeout,
        )

    def schedule_batches(
        self,
        batches: Iterable[Batch] | AsyncIterable[Batch],
        *,
        max_in_flight: int = 4,
        stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
    ) -> AsyncGenerator[ScheduleResult, None]:
        """Stream ready-made batches over one ScheduleTasks call; one result per item, in
        order (see :meth:`schedkit.Client.schedule_batches`). Leaving the loop early, or
        cancelling the task that iterates, cancels the call."""
        return aio_stream.stream_batches(
            self._stub,
            batches,
            max_in_flight=max_in_flight,
            stall_timeout=stall_timeout,
            metadata=self._metadata,
        )

    async def schedule_frame(self, frame: pd.DataFrame, **options: Any) -> pd.DataFrame:
        """:meth:`schedkit.Client.schedule_frame`, with the same options and defaults: the
        timetable is checked and expanded in a worker thread, the batches go over this
        client's stream, so the event loop stays free."""
        bridge = ThreadBridge(self, asyncio.get_running_loop())
        # The blocking method holds the one definition of the options and their defaults;
        # it only calls schedule_batches on its client, which the bridge provides.
        schedule = BlockingClient.schedule_frame
        try:
            return await asyncio.to_thread(schedule, cast(BlockingClient, bridge), frame, **options)
        except asyncio.CancelledError:
            bridge.cancel()
            raise

    # -- reading and cancelling -------------------------------------------------------------

    async def get(self, task_id: str) -> TaskRecord:
        """One task by id."""
        response = await self._call(self._stub.GetTask, pb.GetTaskRequest(id=task_id))
        return task_from_proto(response.task)

    async def tasks_page(
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
        response = await self._call(self._stub.ListTasks, query.page_request(page_size, page_token))
        return page_from_proto(response)

    async def tasks(
        self,
        *,
        states: Sequence[TaskState | str] = (),
        task: str = "",
        labels: Mapping[str, str] | None = None,
        run_after: datetime | None = None,
        run_before: datetime | None = None,
        page_size: int = 500,
    ) -> AsyncGenerator[TaskRecord, None]:
        """Every matching task by run time, fetching pages as the loop asks for them."""
        token = ""
        while True:
            tasks, token = await self.tasks_page(
                states=states,
                task=task,
                labels=labels,
                run_after=run_after,
                run_before=run_before,
                page_size=page_size,
                page_token=token,
            )
            for record in tasks:
                yield record
            if not token:
                return

    async def tasks_frame(
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
        """Matching tasks as a DataFrame (see :meth:`schedkit.Client.tasks_frame`); the frame
        is built in a worker thread."""
        records: list[TaskRecord] = []
        pages = self.tasks(
            states=states,
            task=task,
            labels=labels,
            run_after=run_after,
            run_before=run_before,
            page_size=min(limit, 1000) if limit else 500,
        )
        async with contextlib.aclosing(pages):
            async for record in pages:
                if limit is not None and len(records) >= limit:
                    break
                records.append(record)
        return await asyncio.to_thread(frame_of, records, tz)

    async def cancel(self, task_id: str) -> TaskRecord:
        """Cancel a task that has not started; returns it, CANCELLED."""
        response = await self._call(self._stub.CancelTask, pb.CancelTaskRequest(id=task_id))
        return task_from_proto(response.task)

    def watch(
        self,
        *,
        states: Sequence[TaskState | str] = (),
        task: str = "",
        labels: Mapping[str, str] | None = None,
        ids: Sequence[str] = (),
        timeout: float | None = None,
    ) -> Watch:
        """Tasks as their state changes: ``async with client.watch(...) as changes`` starts
        the call and returns once the server has fixed its starting point (nothing after is
        missed); ``async for task in changes`` reads them. ``timeout`` ends it quietly."""
        request = TaskQuery(states, task, labels).watch_request(ids)
        stub = self._stub
        return Watch(lambda: stub.WatchTasks(request, timeout=timeout, metadata=self._metadata))

    async def wait_for(
        self, task_id: str, states: Iterable[TaskState | str], *, timeout: float = 30.0
    ) -> TaskRecord:
        """Return the task once it is in one of ``states``; Unavailable after ``timeout``."""
        wanted = {TaskState(s) for s in states}
        async with self.watch(ids=[task_id], timeout=timeout) as changes:
            task = await self.get(task_id)  # after the watch started: no change is missed
            if task.state in wanted:
                return task
            async for task in changes:
                if task.state in wanted:
                    return task
        task = await self.get(task_id)
        if task.state in wanted:
            return task
        raise still_waiting(task_id, task.state, timeout)

    async def task_types(self) -> list[TaskType]:
        """The tasks the server allows, with signature and docstring line."""
        response = await self._call(self._stub.ListTaskTypes, pb.ListTaskTypesRequest())
        return task_types_from_proto(response)


class Connecting:
    """What :meth:`Client.connect` returns: await it for a Client, or enter it with
    ``async with`` to have the Client closed on exit."""

    def __init__(self, open_client: Callable[[], Awaitable[Client]]) -> None:
        self._open = open_client
        self._client: Client | None = None

    def __await__(self) -> Generator[Any, None, Client]:
        return self._open().__await__()

    async def __aenter__(self) -> Client:
        self._client = await self._open()
        return self._client

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.close()
