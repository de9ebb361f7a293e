"""Recurring timetable rows as server-side schedules (``--recurring server``), instead of
runs expanded inside the horizon.

A row with a fixed ``every`` (``15min``, ``2h``) or a ``cron`` becomes a
:class:`schedkit.recurring.ScheduleDef`: the task, args, kwargs, queue, priority, labels and
expiry of the row; ``run_at`` its start, ``until`` its end, ``count`` its max runs, its zone
the cron's. The schedule id is the row's ``key``, or derived from the row's content, so
re-running the timetable creates nothing new. A calendar ``every`` (``1D``, ``MS``) keeps
wall-clock time, which a schedule writes as cron: such a row is refused, naming the column.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pandas as pd

from schedkit.model import EPOCH, TaskSpec
from schedkit.recurrence import Recurrence, RecurrenceError
from schedkit.recurring import SCHEDULE_ID, ScheduleDef
from schedkit.timetable.cells import RowErrors, Zones
from schedkit.timetable.recurrence import parse_every

#: Derived schedule ids start with this.
ID_PREFIX = "tt-"


def schedule_rows(
    rules: pd.DataFrame,
    cells: dict[str, pd.Series],
    zones: Zones,
    until: pd.Series,
    count: pd.Series,
    *,
    source: str,
    errors: RowErrors,
) -> list[tuple[str, ScheduleDef]]:
    """(schedule id, definition) of each good recurring row, in row order."""
    out: list[tuple[str, ScheduleDef]] = []
    for row in rules.index:
        if row in errors.rows:
            continue
        every_text, cron = cells["every"][row], cells["cron"][row]
        values: dict[str, Any] = rules.loc[row].to_dict()
        start = values["run_at"]
        every = None
        if every_text:
            try:
                offset = parse_every(every_text)
            except RecurrenceError as exc:
                errors.add([row], "every", str(exc))
                continue
            if not isinstance(offset, pd.offsets.Tick):
                errors.add(
                    [row],
                    "every",
                    f"{every_text!r} keeps wall-clock time: as a server-side schedule write it "
                    "as cron (for example 0 8 * * * for every day at 08:00)",
                )
                continue
            every = pd.Timedelta(offset).to_pytimedelta()
        last = None if pd.isna(until[row]) else until[row].to_pydatetime()
        recurrence = Recurrence(
            cron=(cron,) if cron else (),
            every=every,
            # No zone here means an every row from an instant (cron rows without one were
            # refused while reading): fixed steps from an instant are the same in any zone.
            tz=str(zones.of(row) or "UTC"),
            start=None if pd.isna(start) else start.to_pydatetime(),
            end=last,
        )
        try:
            recurrence.check()
        except RecurrenceError as exc:
            errors.add([row], "cron" if cron else "every", str(exc))
            continue
        priority = values["priority"]
        expires = values["expires_after"]
        action = TaskSpec(
            task=str(values["task"]),
            run_at=EPOCH,
            args=values["args"],
            kwargs=values["kwargs"],
            queue=str(values["queue"]),
            priority=None if pd.isna(priority) else int(priority),
            labels=values["labels"],
            expires_after=None if pd.isna(expires) else pd.Timedelta(expires).to_pytimedelta(),
        )
        limit = 0 if pd.isna(count[row]) else int(count[row])
        definition = ScheduleDef(recurrence, action, max_runs=limit, labels=dict(action.labels))
        key = str(values["key"])
        if key and not SCHEDULE_ID.match(key):
            errors.add([row], "key", "a schedule id: 1 to 128 letters, digits, '-', '_' or '.'")
            continue
        out.append((key or derived_id(source, definition), definition))
    return out


def derived_id(source: str, definition: ScheduleDef) -> str:
    """A schedule id from the timetable's name and the row's content."""
    digest = hashlib.blake2b(f"{source}\x1f{definition.to_json()}".encode(), digest_size=10)
    return ID_PREFIX + digest.hexdigest()
