"""``--sync``'s moves: a row sent again under its key with another time, arguments, labels or
priority moves the task that key made (``UpdateTask``), instead of staying refused as a
conflict (ALREADY_EXISTS) that would block the whole sync.

What ``UpdateTask`` cannot change (the task, queue or expiry) stays a refusal that names the
column: cancel the old row's task by giving the row a new key.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pandas as pd

from schedkit.client.client import Client
from schedkit.errors import FailedPrecondition, NotFound
from schedkit.model import TaskSpec, task_id_for
from schedkit.timetable.outcomes import RunOutcomes

#: What a move can change, as timetable columns (``UpdateTask``'s field mask).
MOVABLE = ("run_at", "args", "kwargs", "labels", "priority")
#: What it cannot: a change here stays a conflict.
FIXED = ("task", "queue", "expires_after")


@dataclass(frozen=True)
class Change:
    """How a run differs from the task its key made: the movable columns to set, or the
    first fixed column that differs (then nothing moves)."""

    changes: dict[str, Any]
    fixed: str = ""


def changes_of(row: pd.Series, current: TaskSpec) -> Change:
    """Compare a checked timetable run with the task stored under its key."""
    wanted = _spec_columns(row)
    have = _spec_columns_of(current)
    for column in FIXED:
        if wanted[column] != have[column]:
            return Change({}, fixed=column)
    return Change({column: wanted[column] for column in MOVABLE if wanted[column] != have[column]})


def move_conflicts(
    client: Client, runs: pd.DataFrame, outcomes: RunOutcomes, conflicts: Iterable[int]
) -> int:
    """Move the task of each conflicting run where only movable columns differ; set each
    run's outcome ('moved', or a refusal naming the column or the task's state). Returns how
    many moved."""
    moved = 0
    for index in conflicts:
        key = str(runs["key"].iat[index])
        task_id = task_id_for(key)
        try:
            current = client.get(task_id)
        except NotFound:
            continue  # forgotten since the send refused it: the refusal stands
        change = changes_of(runs.iloc[index], current.spec)
        if change.fixed:
            outcomes.column[index] = change.fixed
            outcomes.error[index] = (
                f"key {key!r} already has a task with another {change.fixed}; --sync moves "
                f"only {', '.join(MOVABLE)}: give the row a new key to replace the task"
            )
            continue
        try:
            if change.changes:
                client.update_task(task_id, **_update_arguments(change.changes))
        except FailedPrecondition as exc:
            outcomes.error[index] = f"not moved: {exc.message}"
            continue
        outcomes.id[index] = task_id
        outcomes.outcome[index] = "moved"
        outcomes.column[index] = outcomes.error[index] = ""
        moved += 1
    return moved


def _update_arguments(changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(changes)
    if "run_at" in out:
        out["run_at"] = pd.Timestamp(out["run_at"]).to_pydatetime()
    return out


def _spec_columns(row: pd.Series) -> dict[str, Any]:
    priority = row["priority"]
    expires = row["expires_after"]
    return {
        "task": str(row["task"]),
        "queue": str(row["queue"] or ""),
        "expires_after": None if pd.isna(expires) else pd.Timedelta(expires).to_pytimedelta(),
        # The store keeps run times in milliseconds.
        "run_at": pd.Timestamp(row["run_at"]).floor("ms"),
        "args": list(row["args"]),
        "kwargs": dict(row["kwargs"]),
        "labels": dict(row["labels"]),
        "priority": None if priority is None or pd.isna(priority) else int(priority),
    }


def _spec_columns_of(spec: TaskSpec) -> dict[str, Any]:
    expires: timedelta | None = spec.expires_after
    return {
        "task": spec.task,
        "queue": spec.queue,
        "expires_after": expires,
        "run_at": pd.Timestamp(spec.run_at).floor("ms"),
        "args": list(spec.args),
        "kwargs": dict(spec.kwargs),
        "labels": dict(spec.labels),
        "priority": spec.priority,
    }
