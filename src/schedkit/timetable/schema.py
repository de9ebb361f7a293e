"""What a timetable is: its columns, a checked :class:`Timetable`, and a :class:`RowError`.

One row is one task run, or a recurring rule. Columns (names are case-insensitive):

=============== ========= ===================================================================
column          required  meaning
=============== ========= ===================================================================
task            yes       Celery task name (alias ``task_name``)
run_at          yes       ISO 8601 time (alias ``schedule_time``); naive times are read in the
                          row's ``tz`` or ``--tz``; may be empty on a ``cron`` row (= now)
args            no        JSON list of positional arguments (empty: ``[]``)
kwargs          no        JSON object of keyword arguments (empty: ``{}``)
tz              no        IANA zone of a naive ``run_at`` / ``until`` (``Europe/Paris``)
key             no        idempotency key; empty: derived from the row's content and run time
queue           no        Celery queue
priority        no        integer 0 to 255
expires_after   no        ``30min``, ``1h``, or seconds: the task expires that long after its time
labels          no        JSON object of string labels; also ``label.<name>`` columns
every           no        recurrence as a pandas offset: ``15min``, ``1h``, ``1D``, ``1W``
cron            no        recurrence as a cron expression: ``0 8 * * mon-fri``
until           no        last time of a recurrence (inclusive)
count           no        most runs of a recurrence, counted from ``run_at``
=============== ========= ===================================================================

Rows are numbered from 1, the first row after the header (line N+1 of a CSV file when no
cell spans lines); blank rows are counted and ignored. Problems with one row never affect the
others: each becomes a :class:`RowError` naming the row and the column.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from schedkit.errors import FieldViolation
from schedkit.recurring import ScheduleDef

REQUIRED = ("task", "run_at")
OPTIONAL = (
    "args",
    "kwargs",
    "tz",
    "key",
    "queue",
    "priority",
    "expires_after",
    "labels",
    "every",
    "cron",
    "until",
    "count",
)
ALIASES = {"task_name": "task", "schedule_time": "run_at"}
LABEL_PREFIX = "label."
SOURCE_LABEL = "source"
#: The columns of a checked timetable, one row per concrete run.
RUN_COLUMNS = (
    "row",
    "task",
    "run_at",
    "args",
    "kwargs",
    "key",
    "queue",
    "priority",
    "expires_after",
    "labels",
    "moved_to_now",
)
# Derived keys: one-off runs and recurrence runs differ, so --sync can tell them apart.
KEY_PREFIX = "tt:"
RECURRING_KEY_PREFIX = "ttr:"


@dataclass(frozen=True)
class RowError:
    """One bad cell: the data row as the user counts it (from 1), the column, and why."""

    row: int
    column: str
    message: str

    def __str__(self) -> str:
        return f"row {self.row}, {self.column}: {self.message}"

    def violation(self) -> FieldViolation:
        """The same as a FieldViolation named ``row N: column``."""
        return FieldViolation(f"row {self.row}: {self.column}", self.message)


@dataclass
class Timetable:
    """A checked timetable: the runs to send, the runs left out as past, and row errors."""

    runs: pd.DataFrame
    past: pd.DataFrame
    errors: list[RowError]
    warnings: list[str]
    rows: int
    now: pd.Timestamp
    horizon_end: pd.Timestamp
    bad_rows: set[int] = field(default_factory=set)
    #: With ``recurring="server"``: (schedule id, definition) of each good recurring row.
    schedules: list[tuple[str, ScheduleDef]] = field(default_factory=list)
