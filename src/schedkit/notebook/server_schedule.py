"""The builder's form as a server-side schedule: the rule kept by the server, not expanded.

:func:`schedule_options` turns the builder's row (the same dict :meth:`ScheduleBuilder.row`
gives) into ``Client.create_schedule`` keyword arguments, and checks the recurrence with the
code the server checks it with, so a form with an error sends nothing. What the two ways
differ in is said here once:

- ``every`` on the server is exact elapsed time from the first run; only a fixed pandas
  offset (``15min``, ``2h``: a Tick, which the timetable also steps as elapsed time) is
  accepted; a calendar offset (``MS``, ``W-MON``) is refused with a hint to use cron.
- The builder's DST policy ``raise`` (refuse a local time in a gap or overlap) has no meaning
  for a rule that runs for ever; it becomes the server's default ``cron`` rules. ``shift``,
  ``earliest`` and ``latest`` mean the same on both sides.
- ``until`` is the schedule's end, ``count`` its ``max_runs``, ``run at`` its start.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, tzinfo
from typing import Any

import pandas as pd

from schedkit.client.schedules import ScheduleInfo, ScheduleOptions, schedule_definition
from schedkit.errors import InvalidArgument, SchedkitError
from schedkit.notebook._common import describe, fmt_time, parse_labels
from schedkit.recurrence import DstRule, RecurrenceError
from schedkit.recurring import SCHEDULE_ID, Overlap
from schedkit.timetable.recurrence import parse_every
from schedkit.timeutil import DstPolicy, localize

#: The overlap policies, as the dropdown offers them (skip, the server's default, first).
OVERLAPS = tuple(o.value for o in Overlap)
#: The builder's DST policy for a single time -> the schedule's rule for every run.
DST_RULES: Mapping[DstPolicy, DstRule] = {
    "raise": "cron",
    "shift": "shift",
    "earliest": "earliest",
    "latest": "latest",
}
# A server field (the last part of its path) -> the form field a user changes to fix it.
_FORM_FIELDS = {
    "schedule_id": "schedule id",
    "cron_expressions": "rule",
    "every": "rule",
    "time_zone": "time zone",
    "start_time": "run at",
    "end_time": "until",
    "max_runs": "count",
    "labels": "labels",
    "args": "args",
    "kwargs": "kwargs",
    "task": "task",
    "name": "task",
}


def schedule_id(text: str) -> str:
    """The schedule id typed, or InvalidArgument naming the field (checked before sending)."""
    value = text.strip()
    if not value:
        raise InvalidArgument.for_field(
            "schedule id", "required to create a schedule: a name such as water-fern"
        )
    if not SCHEDULE_ID.match(value):
        raise InvalidArgument.for_field(
            "schedule id",
            f"{value[:40]!r} is not a schedule id: 1 to 128 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit",
        )
    return value


def _instant(value: str, place: tzinfo, dst: DstPolicy, field: str) -> datetime | None:
    if not value:
        return None
    return localize(datetime.fromisoformat(value), place, dst=dst, field=field)


def schedule_options(
    row: Mapping[str, str],
    *,
    args: list[Any],
    kwargs: dict[str, Any],
    place: tzinfo,
    dst: DstPolicy,
    overlap: str,
    source: str,
) -> ScheduleOptions:
    """``create_schedule`` options from a builder row with an every or cron rule; the
    recurrence is checked as the server checks it (InvalidArgument naming the form field)."""
    every_text, cron = row["every"], row["cron"]
    if not every_text and not cron:
        raise InvalidArgument.for_field(
            "repeat",
            "a schedule needs a rule: choose every or cron (a one-off run is scheduled, "
            "not kept as a schedule)",
        )
    every = None
    if every_text:
        try:
            offset = parse_every(every_text)
        except RecurrenceError as exc:
            raise InvalidArgument.for_field("rule", str(exc)) from exc
        if not isinstance(offset, pd.offsets.Tick):
            raise InvalidArgument.for_field(
                "rule",
                f"{every_text!r} keeps wall-clock time, and a schedule's every is exact "
                "elapsed time: use cron for it (0 8 * * * for every day at 08:00)",
            )
        every = pd.Timedelta(offset).to_pytimedelta()
    labels = parse_labels(row["labels"]) if row["labels"] else {}
    options: ScheduleOptions = {
        "args": args,
        "kwargs": kwargs,
        "every": every,
        "cron": (cron,) if cron else (),
        "tz": row["tz"],
        "dst": DST_RULES[dst],
        "start": _instant(row["run_at"], place, dst, "run at"),
        "end": _instant(row["until"], place, dst, "until"),
        "max_runs": int(row["count"] or 0),
        "overlap": Overlap(overlap),
        "labels": labels,
        # Runs carry the labels a row's runs would, so filters find them either way.
        "task_labels": {**labels, "source": source},
    }
    try:
        schedule_definition("check", **options).recurrence.check()
    except RecurrenceError as exc:
        raise InvalidArgument.for_field("rule", str(exc)) from exc
    return options


def created_text(info: ScheduleInfo, place: tzinfo) -> str:
    """What the feedback line says of a created (or already there) schedule."""
    verb = "already exists, the same" if info.outcome == "EXISTING" else "created"
    runs = ", ".join(fmt_time(pd.Timestamp(t).tz_convert(place)) for t in info.next_run_times[:3])
    return f"schedule {info.id} {verb}" + (f"; next runs: {runs}" if runs else "")


def server_error_text(exc: SchedkitError) -> str:
    """``exc`` described, plus the form field to change for each field the server names."""
    lines = [describe(exc)]
    for violation in exc.violations:
        last = violation.field.split("[", 1)[0].rsplit(".", 1)[-1]  # labels['a.b'] too
        form = _FORM_FIELDS.get(last)
        if form:
            lines.append(f"-> change the form's {form} ({violation.field})")
    return "\n".join(lines)
