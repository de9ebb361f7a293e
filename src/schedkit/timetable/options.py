"""How to read a timetable: one value that every reader, checker and sender passes along.

Public functions (``schedkit.read_timetable``, ``Client.schedule_frame``) keep their keyword
arguments and build a :class:`TimetableOptions` once; everything below them takes that value.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

from schedkit.errors import InvalidArgument
from schedkit.timeutil import DST_POLICIES, PAST_POLICIES, DstPolicy, PastPolicy


@dataclass(frozen=True)
class TimetableOptions:
    """The reading of a timetable's cells, shared by the CLI, frames and the notebook."""

    #: Zone of naive times, unless a row names its own in ``tz``. None: a naive time (or a
    #: cron rule) on a row without a ``tz`` cell is a row error, never read as UTC silently.
    tz: str | tzinfo | None = None
    #: A local time in a DST gap or overlap: raise (a row error), shift, earliest or latest.
    dst: DstPolicy = "raise"
    #: Runs before now: skip them, run them, or make them row errors.
    past: PastPolicy = "skip"
    #: How far ahead recurring rows are expanded.
    horizon: timedelta = timedelta(days=7)
    #: Stored as the ``source`` label of every run ('' adds none).
    source: str = ""
    #: The server's past tolerance: with past="run", older runs are moved to now.
    past_tolerance: timedelta = timedelta(minutes=5)
    #: Reader of a file (csv, parquet, jsonl, excel); None: by the file's extension.
    format: str | None = None
    #: Recurring rows: "expand" into runs inside the horizon, or "server" to become
    #: server-side schedules (docs/schedules.md says when to choose which).
    recurring: str = "expand"
    #: The moment runs are judged past against; None: the time of the check.
    now: datetime | None = None

    def __post_init__(self) -> None:
        # Refused here, once, whichever entry point built the options.
        if self.dst not in DST_POLICIES:
            raise InvalidArgument.for_field("dst", f"must be one of {', '.join(DST_POLICIES)}")
        if self.recurring not in ("expand", "server"):
            raise InvalidArgument.for_field("recurring", "must be expand or server")
        if self.past not in PAST_POLICIES:
            raise InvalidArgument.for_field("past", f"must be one of {', '.join(PAST_POLICIES)}")
