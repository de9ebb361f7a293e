"""DataFrames both ways: schedule a timetable frame, and read tasks back as a frame.

``Client.schedule_frame`` and ``Client.tasks_frame`` call these. A frame to schedule is a
timetable (see :mod:`schedkit.timetable.schema`): it goes through the same reader and checks as a
CSV file, so a frame and a file with the same cells schedule the same tasks.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import tzinfo
from typing import TYPE_CHECKING

import pandas as pd

from schedkit.model import TaskRecord
from schedkit.timetable.batches import column_batches
from schedkit.timetable.check import load_timetable
from schedkit.timetable.options import TimetableOptions
from schedkit.timetable.outcomes import RunOutcomes, outcome_rows
from schedkit.timeutil import zone

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
    client: Client, frame: pd.DataFrame, options: TimetableOptions, batch_size: int = 1000
) -> pd.DataFrame:
    """Check ``frame`` as a timetable, schedule its runs, and return one row per run.

    The result is indexed like ``frame`` (a recurring row's runs share its label) and has the
    runs' columns (``row`` counts the frame's rows from 1; ``run_at`` is in ``options.tz``)
    plus ``id``, ``outcome`` (created, existing, rejected, invalid or skipped_past), and for a
    refused row the ``column`` and ``error``. A bad row never stops the good ones: it is a
    row of outcome ``invalid`` or ``rejected``.
    """
    table = load_timetable(frame, options)
    runs = table.runs
    outcomes = RunOutcomes.empty(len(runs))
    answers = client.schedule_batches(column_batches(runs, batch_size=batch_size))
    keys, moved = runs["key"].tolist(), runs["moved_to_now"].tolist()
    for index, answer in enumerate(answers):
        outcomes.record(index, answer, str(keys[index]), bool(moved[index]))
    result = outcome_rows(table, outcomes, past_error=f"in the past (past={options.past!r})")
    result["run_at"] = pd.to_datetime(result["run_at"], utc=True).dt.tz_convert(zone(options.tz))
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
