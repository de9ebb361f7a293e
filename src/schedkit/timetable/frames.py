"""DataFrames both ways: schedule a timetable frame, and read tasks back as a frame.

``Client.schedule_frame`` and ``Client.tasks_frame`` call these. A frame to schedule is a
timetable (see :mod:`schedkit.timetable.table`): it goes through the same reader and checks as a
CSV file, so a frame and a file with the same cells schedule the same tasks.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta, tzinfo
from typing import TYPE_CHECKING

import pandas as pd

from schedkit.errors import AlreadyExists
from schedkit.model import TaskRecord, task_id_for
from schedkit.timetable.table import load_timetable
from schedkit.timeutil import DstPolicy, PastPolicy, zone

if TYPE_CHECKING:
    from schedkit.client.client import Client

#: Columns of :func:`tasks_frame`, in order.
TASK_COLUMNS = (
    "id",
    "task",
    "state",
    "run_at",
    "lateness",
    "args",
    "kwargs",
    "labels",
    "key",
    "queue",
    "priority",
    "attempts",
    "created_at",
    "queued_at",
    "started_at",
    "finished_at",
    "result",
    "error",
    "traceback",
)
#: Columns :func:`schedule_frame` adds to the runs of a timetable.
RESULT_COLUMNS = ("id", "outcome", "column", "error")
_TIME_COLUMNS = ("run_at", "created_at", "queued_at", "started_at", "finished_at")


def tasks_frame(records: Iterable[TaskRecord], tz: str | tzinfo = "UTC") -> pd.DataFrame:
    """Tasks as a DataFrame, one row each, with tz-aware datetime columns in ``tz``.

    ``lateness`` is how long after its run time the task started (NaT until it starts).
    """
    place = zone(tz)
    rows = [
        {
            "id": r.id,
            "task": r.spec.task,
            "state": r.state.value,
            "args": r.spec.args,
            "kwargs": r.spec.kwargs,
            "labels": dict(r.spec.labels),
            "key": r.spec.key,
            "queue": r.spec.queue,
            "priority": r.spec.priority,
            "attempts": r.attempts,
            "run_at": r.spec.run_at,
            "created_at": r.created_at,
            "queued_at": r.queued_at,
            "started_at": r.started_at,
            "finished_at": r.finished_at,
            "result": r.result,
            "error": r.error,
            "traceback": r.traceback,
        }
        for r in records
    ]
    frame = pd.DataFrame.from_records(rows, columns=[c for c in TASK_COLUMNS if c != "lateness"])
    for name in _TIME_COLUMNS:
        # utc=True: None becomes NaT and every column is datetime64 even when all are empty.
        frame[name] = pd.to_datetime(frame[name], utc=True).dt.tz_convert(place)
    frame["lateness"] = frame["started_at"] - frame["run_at"]
    frame["priority"] = frame["priority"].astype("Int64")
    frame["attempts"] = frame["attempts"].astype("int64")
    return frame.loc[:, list(TASK_COLUMNS)]


def schedule_frame(
    client: Client,
    frame: pd.DataFrame,
    *,
    tz: str | tzinfo = "UTC",
    dst: DstPolicy = "raise",
    past: PastPolicy = "skip",
    horizon: timedelta = timedelta(days=7),
    source: str = "",
    batch_size: int = 1000,
) -> pd.DataFrame:
    """Check ``frame`` as a timetable, schedule its runs, and return one row per run.

    The result is indexed like ``frame`` (a recurring row's runs share its label) and has the
    runs' columns (``row`` counts the frame's rows from 1; ``run_at`` is in ``tz``) plus
    ``id``, ``outcome`` (created, existing, rejected, invalid or skipped_past), and for a
    refused row the ``column`` and ``error``. A bad row never stops the good ones: it is a
    row of outcome ``invalid`` or ``rejected``.
    """
    # The scheduler CLI owns the run -> message conversion and the error -> column mapping.
    from schedkit.scheduler import column_and_reason
    from schedkit.timetable.batches import column_batches

    table = load_timetable(frame, tz=tz, dst=dst, past=past, horizon=horizon, source=source)
    runs = table.runs.copy()
    ids, outcomes, columns, errors = [], [], [], []
    answers = client.schedule_batches(column_batches(runs, batch_size=batch_size))
    for answer, key, moved in zip(answers, runs["key"], runs["moved_to_now"], strict=True):
        if isinstance(answer.error, AlreadyExists) and moved:
            # Moved to now on an earlier send too: same key, only the time differs.
            ids.append(task_id_for(str(key)))
            outcomes.append("existing")
            columns.append("")
            errors.append("")
            continue
        column, reason = column_and_reason(answer.error)
        ids.append(answer.id)
        outcomes.append(answer.outcome.value.lower())
        columns.append(column)
        errors.append(reason)
    runs = runs.assign(id=ids, outcome=outcomes, column=columns, error=errors)
    past_runs = table.past.assign(
        id=[task_id_for(k) for k in table.past["key"]],
        outcome="skipped_past",
        column="run_at",
        error=f"in the past (past={past!r})",
    )
    invalid = pd.DataFrame(
        {
            "row": [e.row for e in table.errors],
            "outcome": "invalid",
            "column": [e.column for e in table.errors],
            "error": [e.message for e in table.errors],
        }
    )
    parts = [p for p in (runs, past_runs, invalid) if len(p)]
    result = pd.concat(parts, ignore_index=True) if parts else runs
    result = result.sort_values("row", kind="stable", ignore_index=True)
    result["run_at"] = pd.to_datetime(result["run_at"], utc=True).dt.tz_convert(zone(tz))
    result["moved_to_now"] = result["moved_to_now"].astype("boolean")
    # An invalid row has only its number: show the task its cell named, to find it at a glance.
    names = {str(c).strip().lower(): c for c in frame.columns}
    given = names.get("task", names.get("task_name"))
    if given is not None:
        cells = frame[given].reset_index(drop=True)
        missing = result["task"].isna()
        result.loc[missing, "task"] = [str(cells.iat[r - 1]) for r in result.loc[missing, "row"]]
    for name in ("id", "column", "error", "key", "queue", "task"):
        result[name] = result[name].fillna("")
    # Indexed like the caller's frame (a recurring row repeats its label), so
    # result.loc[label] is what became of frame.loc[label].
    result.index = frame.index[result["row"].to_numpy() - 1]
    return result
