"""The asyncio client's schedule and edit methods: the plans of :mod:`schedkit.client.schedules`,
awaited. A mixin of :class:`schedkit.client.aio.Client`, which provides ``_call`` and
``_stub``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar, Unpack

from schedkit.client.schedules import (
    Plan,
    ScheduleInfo,
    ScheduleOptions,
    plan_backfill,
    plan_cancel_tasks,
    plan_create,
    plan_delete,
    plan_get,
    plan_page,
    plan_pause,
    plan_resume,
    plan_trigger,
    plan_update_task,
    schedule_definition,
)
from schedkit.model import TaskRecord, TaskState
from schedkit.recurring import Overlap, ScheduleDef
from schedkit.v1 import schedule_service_pb2_grpc as pb_grpc

T = TypeVar("T")


class AsyncScheduleMethods:
    """Schedules and edits, awaited; see :class:`schedkit.client.schedules.ScheduleMethods`."""

    async def _call(self, method: Callable[..., Awaitable[Any]], request: Any) -> Any:
        raise NotImplementedError  # the Client's

    @property
    def _stub(self) -> pb_grpc.ScheduleServiceAsyncStub:
        raise NotImplementedError  # the Client's

    async def _send(self, plan: Plan[T]) -> T:
        return plan.read(await self._call(getattr(self._stub, plan.method), plan.request))

    async def create_schedule(
        self, schedule_id: str, task: str, **options: Unpack[ScheduleOptions]
    ) -> ScheduleInfo:
        """:meth:`schedkit.Client.create_schedule`, awaited."""
        return await self.create_schedule_def(schedule_id, schedule_definition(task, **options))

    async def create_schedule_def(self, schedule_id: str, definition: ScheduleDef) -> ScheduleInfo:
        """Create a schedule from a :class:`ScheduleDef`."""
        return await self._send(plan_create(schedule_id, definition))

    async def get_schedule(self, schedule_id: str) -> ScheduleInfo:
        """One schedule with its next and recent runs."""
        return await self._send(plan_get(schedule_id))

    async def schedules(
        self, *, labels: Mapping[str, str] | None = None, page_size: int = 100
    ) -> AsyncIterator[ScheduleInfo]:
        """Every schedule (carrying ``labels``), by id, fetching pages as needed."""
        token = ""
        while True:
            found, token = await self._send(plan_page(labels, page_size, token))
            for schedule in found:
                yield schedule
            if not token:
                return

    async def pause(self, schedule_id: str, note: str = "") -> ScheduleInfo:
        """Pause a schedule; its parked runs not yet handed off are removed."""
        return await self._send(plan_pause(schedule_id, note))

    async def resume(self, schedule_id: str, note: str = "") -> ScheduleInfo:
        """Resume a schedule from now; the paused period makes no runs (backfill it)."""
        return await self._send(plan_resume(schedule_id, note))

    async def trigger(self, schedule_id: str, overlap: Overlap | str | None = None) -> TaskRecord:
        """Run a schedule's action now, under ``overlap`` or the schedule's policy."""
        return await self._send(plan_trigger(schedule_id, overlap))

    async def backfill(
        self,
        schedule_id: str,
        start: datetime,
        end: datetime,
        overlap: Overlap | str | None = None,
    ) -> tuple[int, int]:
        """Make the runs of ``[start, end)``; returns (created, already there)."""
        return await self._send(plan_backfill(schedule_id, start, end, overlap))

    async def delete_schedule(self, schedule_id: str) -> int:
        """Forget a schedule; returns how many parked runs were removed."""
        return await self._send(plan_delete(schedule_id))

    async def update_task(
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
        return await self._send(
            plan_update_task(
                task_id, run_at=run_at, args=args, kwargs=kwargs, labels=labels, priority=priority
            )
        )

    async def cancel_tasks(
        self,
        *,
        task: str = "",
        labels: Mapping[str, str] | None = None,
        states: Sequence[TaskState | str] = (),
        run_after: datetime | None = None,
        run_before: datetime | None = None,
    ) -> int:
        """Cancel every matching task not yet started; returns how many."""
        return await self._send(
            plan_cancel_tasks(
                task=task, labels=labels, states=states, run_after=run_after, run_before=run_before
            )
        )
