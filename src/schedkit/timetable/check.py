"""Checking a timetable: raw cells in, a :class:`Timetable` of runs and row errors out.

:func:`load_timetable` reads (:mod:`schedkit.timetable.read`) and checks; :func:`read_timetable`
(``schedkit.read_timetable``) does the same and raises if any row is bad. A bad row never
affects the others: it becomes a :class:`RowError` naming the row and the column.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Any

import numpy as np
import pandas as pd

from schedkit.errors import InvalidArgument
from schedkit.model import utc_now
from schedkit.timetable.cells import (
    LATEST,
    NO_ZONE_HINT,
    RowErrors,
    Zones,
    column_cells,
    counts,
    expiries,
    json_cells,
    labels_of,
    normalise_columns,
    priorities,
    text_cells,
    times,
)
from schedkit.timetable.options import TimetableOptions
from schedkit.timetable.read import Source, read_frame
from schedkit.timetable.runs import apply_past, expand, with_keys
from schedkit.timetable.schema import (
    LABEL_PREFIX,
    OPTIONAL,
    REQUIRED,
    RUN_COLUMNS,
    RowError,
    Timetable,
)
from schedkit.timetable.server import schedule_rows
from schedkit.timeutil import DstPolicy, PastPolicy, zone

_DEFAULT = TimetableOptions()


@dataclass
class _Cells:
    """The text cells of the non-blank rows, by column (``label.<name>`` columns included)."""

    by_name: dict[str, pd.Series]
    label_columns: list[str]
    index: pd.Index


def check_timetable(
    frame: pd.DataFrame,
    options: TimetableOptions = _DEFAULT,
    read_errors: Iterable[RowError] = (),
) -> Timetable:
    """Check raw cells (from :func:`read_frame`) and expand them into runs; never raises for
    a bad row, only for a table that cannot be used at all (missing columns, bad options)."""
    default_zone = None if options.tz is None else zone(options.tz, field="tz")
    moment = pd.Timestamp(options.now or utc_now()).tz_convert("UTC")
    horizon_end = moment + pd.Timedelta(options.horizon)
    messages: list[str] = []
    frame = normalise_columns(frame, messages)
    errors = RowErrors(read_errors)
    cells = _non_blank_cells(frame)
    zones = Zones(cells.by_name["tz"], default_zone, errors)
    until = times(cells.by_name["until"], zones, "until", options.dst, errors)
    count = counts(cells.by_name["count"], errors)
    base = _rows(cells, zones, until, options, errors)
    plain = _plain(cells)
    one_off = base[plain & errors.mask(base)]
    schedules = []
    if options.recurring == "server":
        schedules = schedule_rows(
            base[~plain],
            cells.by_name,
            zones,
            until,
            count,
            source=options.source,
            errors=errors,
        )
        repeated = base[:0]
    else:
        repeated = expand(
            base[~plain],
            cells.by_name,
            zones,
            until,
            count,
            now=moment,
            end=horizon_end,
            dst=options.dst,
            errors=errors,
        )
    runs = pd.concat([one_off, repeated]) if len(repeated) else one_off
    runs = runs[errors.mask(runs)]
    runs = with_keys(runs, options.source, recurring=runs.index.isin(repeated.index))
    runs, past_runs = apply_past(runs, options.past, moment, options.past_tolerance, errors)
    return Timetable(
        runs=_public(runs),
        past=_public(past_runs),
        errors=sorted(errors.items, key=lambda e: (e.row, e.column)),
        warnings=messages,
        rows=max([int(frame.index.max()) if len(frame) else 0, *(e.row for e in errors.items)]),
        now=moment,
        horizon_end=horizon_end,
        bad_rows=errors.rows,
        schedules=schedules,
    )


def _non_blank_cells(frame: pd.DataFrame) -> _Cells:
    """Every known column as text cells, blank rows left out (they still count for numbering)."""
    cells = {name: column_cells(frame, name) for name in (*REQUIRED, *OPTIONAL)}
    label_columns = [c for c in frame.columns if str(c).startswith(LABEL_PREFIX)]
    for name in label_columns:
        cells[name] = text_cells(frame[name])
    filled = pd.Series(False, index=frame.index)
    for values in cells.values():
        filled |= values != ""
    for name in frame.columns:
        if name not in cells:
            filled |= text_cells(frame[name]) != ""
    keep = filled.to_numpy()
    if not keep.all():  # a copy of every column costs a second on a million rows
        cells = {name: values[keep] for name, values in cells.items()}
    return _Cells(cells, label_columns, frame.index[keep])


def _plain(cells: _Cells) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """True for one-off rows, False for recurring ones (every or cron)."""
    return ((cells.by_name["every"] == "") & (cells.by_name["cron"] == "")).to_numpy()


def _rows(
    cells: _Cells, zones: Zones, until: pd.Series, options: TimetableOptions, errors: RowErrors
) -> pd.DataFrame:
    """One checked row per non-blank timetable row (recurring rules not yet expanded)."""
    by_name, index = cells.by_name, cells.index
    task = by_name["task"]
    errors.add(task.index[task == ""], "task", "required: a task name")
    run_at = times(by_name["run_at"], zones, "run_at", options.dst, errors)
    for name, values in (("run_at", run_at), ("until", until)):
        beyond = (values > LATEST).to_numpy()
        errors.add(values.index[beyond], name, "later than the year 9000")
    recurring_cron = by_name["cron"] != ""
    both = (by_name["every"] != "") & recurring_cron
    errors.add(index[both.to_numpy()], "cron", "give every or cron, not both")
    # A cron rule's hours are wall-clock hours: without a zone they mean nothing.
    cron_unzoned = (recurring_cron & zones.unzoned()).to_numpy()
    errors.add(index[cron_unzoned], "cron", f"a cron rule needs a time zone; {NO_ZONE_HINT}")
    needs_time = (by_name["run_at"] == "") & ~recurring_cron
    errors.add(index[needs_time.to_numpy()], "run_at", "required: when the task runs")
    args, args_text = json_cells(
        by_name["args"], "args", list, "a JSON list such as [1, 2]", errors
    )
    kwargs, kwargs_text = json_cells(
        by_name["kwargs"], "kwargs", dict, 'a JSON object such as {"litres": 2}', errors
    )
    labels, labels_text = labels_of(by_name, cells.label_columns, options.source, errors)
    plain = _plain(cells)
    for name in ("until", "count"):
        stray = plain & (by_name[name] != "").to_numpy()
        errors.add(index[stray], name, f"{name} needs every or cron on the same row")
    return pd.DataFrame(
        {
            "row": index.to_numpy(dtype=np.int64),
            "task": task,
            "run_at": run_at,
            "args": args,
            "kwargs": kwargs,
            "key": by_name["key"],
            "queue": by_name["queue"],
            "priority": priorities(by_name["priority"], errors),
            "expires_after": expiries(by_name["expires_after"], errors),
            "labels": labels,
            "moved_to_now": False,
            "_args": args_text,
            "_kwargs": kwargs_text,
            "_labels": labels_text,
        },
        index=index,
    )


def _public(runs: pd.DataFrame) -> pd.DataFrame:
    return runs.loc[:, list(RUN_COLUMNS)].reset_index(drop=True)


def load_timetable(timetable: Source, options: TimetableOptions = _DEFAULT) -> Timetable:
    """Read and check a timetable file (or DataFrame); see :func:`check_timetable`."""
    frame, read_errors = read_frame(timetable, format=options.format)
    return check_timetable(frame, options, read_errors)


def read_timetable(
    timetable: Source,
    *,
    format: str | None = None,
    tz: str | tzinfo | None = None,
    dst: DstPolicy = "raise",
    past: PastPolicy = "skip",
    horizon: timedelta = timedelta(days=7),
    source: str = "",
    now: datetime | None = None,
) -> pd.DataFrame:
    """The checked runs of a timetable (path, file object or DataFrame), one row per run.

    Raises InvalidArgument naming every bad cell as ``row N: column`` if any row is bad.
    """
    options = TimetableOptions(
        tz=tz, dst=dst, past=past, horizon=horizon, source=source, format=format, now=now
    )
    table = load_timetable(timetable, options)
    if table.errors:
        shown = "; ".join(str(e) for e in table.errors[:5])
        more = f" (and {len(table.errors) - 5} more)" if len(table.errors) > 5 else ""
        raise InvalidArgument(
            f"{len(table.errors)} bad cell(s) in the timetable: {shown}{more}",
            violations=tuple(e.violation() for e in table.errors),
        )
    return table.runs
