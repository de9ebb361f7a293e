"""The worker hook's part for runs of recurring schedules: overlap policies at start, and
pause on failure.

A run's start goes through the store's overlap guard (``run_guard.lua`` before
``start.lua``, one script): with another run of its schedule STARTED or RETRYING, ``skip``
cancels the new run, ``buffer_one``/``buffer_all`` park it again shortly (``buffer_one``
skips it when one already waits), ``cancel_other`` stops the running ones (Celery revoke with
terminate) and then starts it. A task that is no schedule's run costs the guard one field
read in the same script.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from schedkit.errors import SchedkitError
from schedkit.model import TaskState
from schedkit.recurring import SCHEDULE_LABEL
from schedkit.settings import Settings
from schedkit.store.schedules import ScheduleStore
from schedkit.store.store import Store

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=8)
def _schedules(store: Store) -> tuple[ScheduleStore, int]:
    # One per store object (a worker process has one): the scripts are registered once.
    buffer_ms = int(Settings.from_env().overlap_buffer * 1000)
    return ScheduleStore(store), buffer_ms


def start(store: Store, task: Any, task_id: str) -> str:
    """Ask to start ``task_id`` under its schedule's overlap policy; the verdicts of
    :meth:`Store.start`, or 'overlap:skipped' / 'overlap:buffered' (refused: Ignore)."""
    # In the run's partition, which holds its schedule too (ScheduleStore.start_run).
    schedules, buffer_ms = _schedules(store)
    verdict = schedules.start_run(task_id, buffer_ms=buffer_ms)
    for _ in range(3):  # others may start meanwhile; each pass stops those it finds
        if not verdict.startswith("overlap:cancel "):
            break
        others = verdict.split(" ")[1:]
        log.warning(
            "overlap policy cancel_other: stopping %s for %s",
            ", ".join(others),
            task_id,
            extra={"task_id": task_id},
        )
        task.app.control.revoke(others, terminate=True)
        # A terminated task reports no failure to the hook: record it, so it stops counting.
        for other in others:
            store.finish(other, TaskState.FAILED, error=f"overlap: cancelled by run {task_id}")
        # Through the guard again, so this run is marked as the one going.
        verdict = schedules.start_run(task_id, buffer_ms=buffer_ms)
    if verdict.startswith("overlap:cancel "):
        verdict = "overlap:busy"  # still contested: refused, like a skip
    return verdict


def finished(store: Store, task_id: str, state: TaskState) -> None:
    """After a run ended FAILED, pause its schedule if the schedule asks to."""
    if state is not TaskState.FAILED:
        return
    try:
        labels = store.get(task_id).spec.labels
        schedule_id = labels.get(SCHEDULE_LABEL)
        if schedule_id:
            note = f"paused on failure of run {task_id}"
            _schedules(store)[0].pause(schedule_id, note, on_failure=True)
    except SchedkitError:  # pausing must never change how the task itself ended
        log.warning("could not apply pause on failure for %s", task_id, exc_info=True)
