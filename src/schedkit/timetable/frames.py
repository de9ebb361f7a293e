"""DataFrames both ways: schedule a timetable frame, and read tasks back as a frame.

``Client.schedule_frame`` and ``Client.tasks_frame`` call these. A frame to schedule is a
timetable (see :mod:`schedkit.timetable.schema`): it goes through the same reader and checks as a
CSV file, so a frame and a file with the same cells schedule the same tasks.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import tzinfo
from typing import TYPE_CHECKING, Any

import pandas as pd

from schedkit.model import TaskRecord
from schedkit.timetable.batches import column_batches
from schedkit.timetable.check import load_timetable
from schedkit.timetable.options import TimetableOptions
from schedkit.timetable.outcomes import RunOutcomes, outcome_rows
from schedkit.timetable.schema import ALIASES
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
#: What a reader of :func:`schedule_frame`'s result looks at first, in order; the run's other
#: columns follow.
FIRST_COLUMNS = ("outcome", "error", "column", "row", "task", "run_at", "run_at_as_written", "id")
#: Outcomes that need someone's attention: :attr:`ScheduleOutcomes.problems`.
PROBLEM_OUTCOMES = ("invalid", "rejected")


class ScheduleOutcomes(pd.DataFrame):
    """The result of ``Client.schedule_frame``: a DataFrame, one row per run, that shows its
    ``error`` texts whole (pandas cuts cells at 50 characters, which hides "did you mean")
    and has :attr:`problems`."""

    @property
    def _constructor(self) -> Any:
        return ScheduleOutcomes

    @property
    def problems(self) -> ScheduleOutcomes:
        """Only the rows that need attention: invalid or rejected."""
        return ScheduleOutcomes(self[self["outcome"].isin(PROBLEM_OUTCOMES)])

    def _repr_html_(self) -> str | None:
        with pd.option_context("display.max_colwidth", None):
            table = super()._repr_html_()  # type: ignore[misc]
        if table is None:
            return None
        # Left-aligned and wide enough to read: the error is the 3rd cell (after the index).
        return (
            "<div class='schedkit-outcomes'><style>.schedkit-outcomes td,.schedkit-outcomes th"
            "{text-align:left !important;vertical-align:top}.schedkit-outcomes td:nth-child(3)"
            "{min-width:32em;white-space:normal}</style>" + str(table) + "</div>"
        )

    def __repr__(self) -> str:
        with pd.option_context("display.max_colwidth", None):
            return super().__repr__()


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
) -> ScheduleOutcomes:
    """Check ``frame`` as a timetable, schedule its runs, and return one row per run.

    The result is indexed like ``frame`` (a recurring row's runs share its label). It starts
    with ``outcome`` (created, existing, rejected, invalid or skipped_past), ``error`` and the
    ``column`` it names, ``row`` (the frame's rows from 1), ``task``, ``run_at`` (in
    ``options.tz``, UTC without one), ``run_at_as_written`` (the cell, which is all an
    invalid row has), ``id``, then the runs' other columns. A bad row never stops the good
    ones: it is a row of outcome ``invalid`` or ``rejected``; ``result.problems`` lists them.
    """
    table = load_timetable(frame, options)
    runs = table.runs
    outcomes = RunOutcomes.empty(len(runs))
    answers = client.schedule_batches(column_batches(runs, batch_size=batch_size))
    keys, moved = runs["key"].tolist(), runs["moved_to_now"].tolist()
    for index, answer in enumerate(answers):
        outcomes.record(index, answer, str(keys[index]), bool(moved[index]))
    result = outcome_rows(table, outcomes, past_error=f"in the past (past={options.past!r})")
    result["run_at"] = pd.to_datetime(result["run_at"], utc=True).dt.tz_convert(
        zone(options.tz)  # None: UTC, for display only (naive cells were refused)
    )
    result["moved_to_now"] = result["moved_to_now"].astype("boolean")
    # An invalid row has only its number: show the task its cell named, to find it at a glance.
    names = {ALIASES.get(str(c).strip().lower(), str(c).strip().lower()): c for c in frame.columns}
    positions = result["row"].to_numpy() - 1
    if "task" in names:
        cells = frame[names["task"]].reset_index(drop=True)
        result["task"] = result["task"].astype(object)  # all-NaN floats when every row is bad
        missing = result["task"].isna()
        result.loc[missing, "task"] = [str(cells.iat[r - 1]) for r in result.loc[missing, "row"]]
    written = frame[names["run_at"]] if "run_at" in names else pd.Series("", index=frame.index)
    result["run_at_as_written"] = [_as_written(v) for v in written.to_numpy()[positions]]
    for name in ("id", "column", "error", "key", "queue", "task"):
        result[name] = result[name].astype(object).fillna("")
    # Indexed like the caller's frame (a recurring row repeats its label), so
    # result.loc[label] is what became of frame.loc[label].
    result.index = frame.index[positions]
    rest = [c for c in result.columns if c not in FIRST_COLUMNS]
    return ScheduleOutcomes(result.loc[:, [*FIRST_COLUMNS, *rest]])


def _as_written(value: Any) -> str:
    """A run_at cell as the user wrote it ('' for an empty one)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    return value.isoformat(sep=" ") if hasattr(value, "isoformat") else str(value)
