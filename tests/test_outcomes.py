"""The outcome rules shared by the scheduler command and ``Client.schedule_frame``."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from schedkit.errors import AlreadyExists, FieldViolation, InvalidArgument
from schedkit.model import Outcome, ScheduleResult, task_id_for
from schedkit.timetable.check import load_timetable
from schedkit.timetable.options import TimetableOptions
from schedkit.timetable.outcomes import (
    OUTCOME_COLUMNS,
    RunOutcomes,
    column_and_reason,
    outcome_rows,
)

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


def test_a_refusal_names_the_timetable_column_without_the_server_path() -> None:
    error = InvalidArgument(
        "bad",
        violations=(FieldViolation("columns.templates[0].args", "columns.templates[0].args: no"),),
    )
    assert column_and_reason(error) == ("args", "no")
    keyed = InvalidArgument("bad", violations=(FieldViolation("columns.idempotency_keys[7]", "x"),))
    assert column_and_reason(keyed) == ("key", "x")
    assert column_and_reason(None) == ("", "")


def test_already_exists_for_a_run_moved_to_now_is_existing() -> None:
    outcomes = RunOutcomes.empty(3)
    refused = ScheduleResult("", Outcome.REJECTED, AlreadyExists("same key, other time"))
    outcomes.record(0, refused, "k0", moved_to_now=True)
    outcomes.record(1, refused, "k1", moved_to_now=False)
    outcomes.record(2, ScheduleResult("abc", Outcome.CREATED), "k2", moved_to_now=False)
    assert outcomes.outcome == ["existing", "rejected", "created"]
    assert outcomes.id == [task_id_for("k0"), "", "abc"]
    assert outcomes.rejected() == [1]


def test_outcome_rows_hold_runs_past_runs_and_invalid_rows_in_row_order() -> None:
    text = "task,run_at\nadd,2026-01-16 08:00\nadd,2026-01-10 08:00\nadd,nope\n"
    table = load_timetable(io.StringIO(text), TimetableOptions(now=NOW, tz="UTC"))
    outcomes = RunOutcomes.empty(len(table.runs))
    rows = outcome_rows(table, outcomes, past_error="in the past")
    assert list(rows["row"]) == [1, 2, 3]
    assert list(rows["outcome"]) == ["", "skipped_past", "invalid"]
    assert list(rows["column"]) == ["", "run_at", "run_at"]
    assert set(OUTCOME_COLUMNS) <= set(rows.columns)


def test_outcome_rows_of_invalid_rows_only_still_have_every_column() -> None:
    table = load_timetable(
        io.StringIO("task,run_at\nadd,nope\n"), TimetableOptions(now=NOW, tz="UTC")
    )
    rows = outcome_rows(table, RunOutcomes.empty(0), past_error="in the past")
    assert list(rows.columns) == [*table.runs.columns, *OUTCOME_COLUMNS]
    assert list(rows["outcome"]) == ["invalid"]
