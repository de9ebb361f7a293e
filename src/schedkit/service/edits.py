"""Editing what is parked, independent of gRPC: UpdateTask and CancelTasks by filter.

An update is allowed while a task is SCHEDULED and unclaimed: once a dispatcher hands it off,
Celery holds the message, and the refusal names the state. A keyed task's fingerprint follows
its new content, so re-sending the new content is EXISTING and the old one a conflict.
CancelTasks pages through the filter in slices of :data:`SLICE` ids, one script each, so a
million matches cost a thousand round trips and hold nothing in memory between slices.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from schedkit.errors import FailedPrecondition, InvalidArgument, NotFound, excerpt
from schedkit.model import (
    EPOCH,
    WAITING_STATES,
    TaskRecord,
    TaskState,
    fingerprint_of,
    to_millis,
)
from schedkit.service.schedules import Schedules
from schedkit.store.edits import EditStore
from schedkit.store.query import TaskQuery
from schedkit.store.record import Field, encode_template

log = logging.getLogger(__name__)

#: What UpdateTask may change (update_mask paths), by TaskSpec attribute.
UPDATABLE = {
    "run_time": "run_at",
    "args": "args",
    "kwargs": "kwargs",
    "labels": "labels",
    "priority": "priority",
}
SLICE = 1000
#: Fields a template may leave out; an update that empties one removes it from the record.
_OPTIONAL = (Field.ARGS, Field.KWARGS, Field.QUEUE, Field.PRIORITY, Field.LABELS, Field.EXPIRES)


class TaskEdits:
    """UpdateTask and CancelTasks on domain types."""

    def __init__(self, schedules: Schedules) -> None:
        self.tasks = schedules
        self.store = EditStore(schedules.store)

    def update(self, task_id: str, changes: dict[str, Any]) -> TaskRecord:
        """Apply ``changes`` (TaskSpec attributes) to a parked task."""
        if not task_id:
            raise InvalidArgument.for_field("id", "required: a task id")
        record = self.tasks.store.get(task_id)
        if record.state is not TaskState.SCHEDULED:
            raise _handed_off(task_id, record.state.value)
        spec = replace(record.spec, **changes)
        now = self.tasks.clock()
        tolerance = timedelta(seconds=self.tasks.settings.past_tolerance)
        if "run_at" in changes and spec.run_at < now - tolerance:
            raise InvalidArgument.for_field(
                "spec.run_time", f"{spec.run_at.isoformat()} is in the past"
            )
        self.tasks.check_template(replace(spec, run_at=EPOCH), "spec.")
        template = encode_template(spec)
        run_ms = to_millis(spec.run_at)
        fingerprint = fingerprint_of(template.head, run_ms, template.tail) if spec.key else ""
        present = set(template.fields[0::2])
        verdict = self.store.update(
            task_id,
            run_ms=run_ms,
            fingerprint=fingerprint,
            set_fields=template.fields,
            remove_fields=[f for f in _OPTIONAL if f not in present],
            window_seconds=self.tasks.settings.handoff_window,
            now=now,
        )
        if verdict == "missing":
            raise NotFound(f"no task with id {excerpt(task_id)!r}")
        if verdict == "claimed":
            raise _handed_off(task_id, "being handed off (QUEUED)")
        if verdict != "updated":
            raise _handed_off(task_id, verdict)
        return self.tasks.store.get(task_id)

    def cancel(self, query: TaskQuery, now: datetime | None = None) -> int:
        """Cancel every task ``query`` selects that has not started; how many."""
        if not (query.task or query.labels or query.run_after or query.run_before):
            raise InvalidArgument.for_field(
                "filter", "set task, labels or a run-time bound: cancelling everything is no filter"
            )
        if query.ids:
            raise InvalidArgument.for_field("filter.ids", "use CancelTask for tasks by id")
        states = query.states or WAITING_STATES
        if not states <= WAITING_STATES:
            raise InvalidArgument.for_field(
                "filter.states", "only SCHEDULED, QUEUED and RETRYING tasks can be cancelled"
            )
        query = replace(query, states=frozenset(states))
        total, token = 0, ""
        while True:
            records, token = self.tasks.store.page(query, page_size=SLICE, page_token=token)
            count, handed = self.store.cancel_many([r.id for r in records], now=now)
            total += count
            for task_id in handed:
                self.tasks.revoke(task_id)
            if not token:
                return total


def _handed_off(task_id: str, state: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"task {task_id} is {state}: only a SCHEDULED task not yet handed off can be updated; "
        "cancel it and schedule a new one"
    )
