"""What became of each row of a timetable: the rules and the table of outcomes, said once for the
scheduler command (its ``--output`` file) and ``Client.schedule_frame`` (its result).

Every outcome row has the same columns: ``id`` (the task), ``outcome`` (created, existing,
rejected, invalid or skipped_past; the command adds planned, moved, cancelled and
cancel_failed), ``column`` (the timetable column a refusal names) and ``error`` (why).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd

from schedkit.errors import AlreadyExists, SchedkitError
from schedkit.model import Outcome, ScheduleResult, task_id_for
from schedkit.timetable.schema import Timetable

#: The columns every outcome row adds to a run (or has alone, for a row that never ran).
OUTCOME_COLUMNS = ("id", "outcome", "column", "error")
#: Server-side field names of a TaskSpec, as timetable columns.
COLUMN_OF_FIELD = {
    "task": "task",
    "run_time": "run_at",
    "args": "args",
    "kwargs": "kwargs",
    "idempotency_key": "key",
    "queue": "queue",
    "priority": "priority",
    "expires_after": "expires_after",
    "labels": "labels",
    "columns.run_time_micros": "run_at",
    "columns.idempotency_keys": "key",
}


def column_and_reason(error: Exception | None) -> tuple[str, str]:
    """The timetable column a refusal names (or '') and the reason without the field path."""
    if isinstance(error, SchedkitError) and error.violations:
        violation = error.violations[0]
        # specs[3].args, columns.templates[0].args, columns.run_time_micros[7], args
        name = re.sub(r"^(specs|columns\.templates)\[\d+\]\.|\[\d+\]$", "", violation.field)
        name = COLUMN_OF_FIELD.get(name, COLUMN_OF_FIELD.get(re.split(r"[\[.]", name)[0], name))
        # The server's message repeats its own field path; the row and column replace it.
        return name, violation.description.removeprefix(f"{violation.field}: ")
    return "", str(error) if error else ""


@dataclass
class RunOutcomes:
    """The outcome of each run of a timetable, by the run's position: one list per column."""

    id: list[str]
    outcome: list[str]
    column: list[str]
    error: list[str]

    @classmethod
    def empty(cls, size: int) -> RunOutcomes:
        """``size`` runs with nothing known yet (outcome '')."""
        return cls([""] * size, [""] * size, [""] * size, [""] * size)

    def record(self, index: int, result: ScheduleResult, key: str, moved_to_now: bool) -> None:
        """Set the outcome of run ``index`` from the server's answer."""
        if result.outcome is Outcome.REJECTED:
            if isinstance(result.error, AlreadyExists) and moved_to_now:
                # Moved to now on an earlier send too: same key, only the time differs.
                self.id[index] = task_id_for(key)
                self.outcome[index] = "existing"
                return
            self.column[index], self.error[index] = column_and_reason(result.error)
            self.outcome[index] = "rejected"
            return
        self.id[index] = result.id
        self.outcome[index] = "created" if result.outcome is Outcome.CREATED else "existing"

    def rejected(self) -> list[int]:
        """Positions of the runs the server refused."""
        return [i for i, outcome in enumerate(self.outcome) if outcome == "rejected"]


def outcome_rows(table: Timetable, outcomes: RunOutcomes, past_error: str) -> pd.DataFrame:
    """Every row of ``table`` with its outcome, in timetable order: its runs (the columns of
    ``table.runs`` plus :data:`OUTCOME_COLUMNS`), its runs skipped as past (``past_error``
    says why), and its invalid rows (only ``row``, ``outcome``, ``column``, ``error``)."""
    runs = table.runs.assign(
        id=outcomes.id, outcome=outcomes.outcome, column=outcomes.column, error=outcomes.error
    )
    past = table.past.assign(
        id=[task_id_for(k) for k in table.past["key"]],
        outcome="skipped_past",
        column="run_at",
        error=past_error,
    )
    invalid = pd.DataFrame(
        {
            "row": [e.row for e in table.errors],
            "outcome": "invalid",
            "column": [e.column for e in table.errors],
            "error": [e.message for e in table.errors],
        }
    )
    parts = [p for p in (runs, past, invalid) if len(p)]
    rows = pd.concat(parts, ignore_index=True) if parts else runs
    if len(rows.columns) < len(runs.columns):  # invalid rows only: still every column
        rows = rows.reindex(columns=runs.columns)
    return rows.sort_values("row", kind="stable", ignore_index=True)
