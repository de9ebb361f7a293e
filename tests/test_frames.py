"""DataFrames both ways against the real stack: schedule_frame and tasks_frame."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from schedkit.client.client import Client
from schedkit.timetable.frames import TASK_COLUMNS


def _label() -> dict[str, str]:
    return {"test": uuid.uuid4().hex[:10]}


def test_schedule_frame_returns_ids_and_outcomes_per_row(client: Client) -> None:
    label = _label()
    start = pd.Timestamp.now(tz="Europe/Paris").floor("s") + pd.Timedelta(minutes=30)
    frame = pd.DataFrame(
        {
            "task": ["add", "add", "add", "add", "no_such_task"],
            "run_at": pd.date_range(start, periods=5, freq="1min"),
            "args": ["[1, 2]", "[3, 4]", "[5, 6", "[7, 8]", "[]"],
            "labels": [str(label).replace("'", '"')] * 5,
        }
    )
    result = client.schedule_frame(frame, tz="Europe/Paris")

    assert list(result["row"]) == [1, 2, 3, 4, 5]
    assert list(result["outcome"]) == ["created", "created", "invalid", "created", "rejected"]
    assert result.loc[2, "column"] == "args"
    assert "not valid JSON" in result.loc[2, "error"]
    assert result.loc[4, "column"] == "task"
    assert "unknown task 'no_such_task'" in result.loc[4, "error"]
    assert str(result["run_at"].dt.tz) == "Europe/Paris"
    created = result[result["outcome"] == "created"]
    assert list(created["run_at"]) == [
        start,
        start + pd.Timedelta(minutes=1),
        start + pd.Timedelta(minutes=3),
    ]
    for task_id, args in zip(created["id"], ([1, 2], [3, 4], [7, 8]), strict=True):
        stored = client.get(task_id)
        assert stored.state == "SCHEDULED"
        assert stored.spec.args == args
        assert stored.spec.labels == label

    again = client.schedule_frame(frame, tz="Europe/Paris")
    assert list(again["outcome"]) == ["existing", "existing", "invalid", "existing", "rejected"]
    assert list(again["id"][again["outcome"] == "existing"]) == list(created["id"])


def test_schedule_frame_reports_past_rows_instead_of_dropping_them(client: Client) -> None:
    frame = pd.DataFrame(
        {"task": ["add"], "run_at": [datetime.now(UTC) - timedelta(days=1)], "args": ["[1, 1]"]}
    )
    result = client.schedule_frame(frame)
    assert list(result["outcome"]) == ["skipped_past"]
    assert result.loc[0, "column"] == "run_at"


def test_tasks_frame_has_tz_aware_times_and_lateness(client: Client) -> None:
    label = _label()
    done = client.schedule("add", 2, 3, run_at=timedelta(seconds=0.5), labels=label)
    waiting = client.schedule("add", 1, 1, run_at=timedelta(hours=1), labels=label)
    client.wait_for(done.id, ["SUCCEEDED"])

    frame = client.tasks_frame(labels=label, tz="America/New_York")

    assert list(frame.columns) == list(TASK_COLUMNS)
    assert list(frame["id"]) == [done.id, waiting.id]  # by run time
    for column in ("run_at", "created_at", "queued_at", "started_at", "finished_at"):
        assert str(frame[column].dt.tz) == "America/New_York", column
    assert list(frame["state"]) == ["SUCCEEDED", "SCHEDULED"]
    assert frame.loc[0, "result"] == "5"
    assert frame.loc[0, "lateness"] == frame.loc[0, "started_at"] - frame.loc[0, "run_at"]
    assert pd.isna(frame.loc[1, "started_at"])
    assert pd.isna(frame.loc[1, "lateness"])
    assert frame.loc[1, "args"] == [1, 1]


def test_tasks_frame_of_nothing_keeps_the_column_types(client: Client) -> None:
    frame = client.tasks_frame(labels=_label())
    assert len(frame) == 0
    assert list(frame.columns) == list(TASK_COLUMNS)
    assert str(frame["run_at"].dt.tz) == "UTC"


def test_tasks_frame_limit(client: Client) -> None:
    label = _label()
    for n in range(3):
        client.schedule("add", n, n, run_at=timedelta(hours=2, minutes=n), labels=label)
    assert len(client.tasks_frame(labels=label, limit=2)) == 2


@pytest.mark.parametrize("bad_zone", ["Mars/Olympus"])
def test_tasks_frame_names_a_bad_zone(client: Client, bad_zone: str) -> None:
    from schedkit.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="unknown time zone 'Mars/Olympus'"):
        client.tasks_frame(tz=bad_zone)


def test_schedule_frame_result_is_indexed_like_the_frame(client: Client) -> None:
    label = json.dumps(_label())
    start = pd.Timestamp.now(tz="UTC").floor("s") + pd.Timedelta(hours=5)
    frame = pd.DataFrame(
        {
            "task": ["add", "add", "add"],
            "run_at": [start, start, "not a time"],
            "args": ["[1, 1]", "[2, 2]", "[3, 3]"],
            "every": ["1h", "", ""],
            "count": ["3", "", ""],
            "labels": label,
        },
        index=pd.Index(["hourly", "once", "broken"], name="name"),
    )
    result = client.schedule_frame(frame)
    assert list(result.index) == ["hourly"] * 3 + ["once", "broken"]
    assert result.index.name == "name"
    assert list(result.loc["hourly", "outcome"]) == ["created"] * 3
    assert result.loc["broken", "outcome"] == "invalid"
    assert result.loc["broken", "task"] == "add"  # the invalid row still says which task
    assert result.loc["broken", "column"] == "run_at"


def test_schedule_frame_refuses_a_naive_time_without_a_zone(client: Client) -> None:
    # What a user meant for Paris, with no zone anywhere: refused with its row, column and a
    # hint, never created as UTC; the rows that say their zone are scheduled.
    label = json.dumps(_label())
    frame = pd.DataFrame(
        {
            "task": ["add", "add", "add", "add"],
            "run_at": [
                "2099-03-01 09:00",
                "2099-03-01 09:00",
                "2099-03-01T09:00:00+01:00",
                "2027-03-28 02:30",
            ],
            "tz": ["", "Europe/Paris", "", "Europe/Paris"],
            "args": ["[1, 1]", "[2, 2]", "[3, 3]", "[4, 4]"],
            "labels": label,
        }
    )
    result = client.schedule_frame(frame)
    assert list(result["outcome"]) == ["invalid", "created", "created", "invalid"]
    assert list(result["column"]) == ["run_at", "", "", "run_at"]
    assert "'2099-03-01 09:00' has no time zone" in result.loc[0, "error"]
    assert "tz='UTC' if UTC is meant" in result.loc[0, "error"]
    assert "does not exist in Europe/Paris" in result.loc[3, "error"]
    # The invalid rows show the time as it was written, not NaT.
    assert result.loc[0, "run_at_as_written"] == "2099-03-01 09:00"
    assert result.loc[3, "run_at_as_written"] == "2027-03-28 02:30"
    assert pd.Timestamp(result.loc[1, "run_at"]) == pd.Timestamp("2099-03-01 08:00", tz="UTC")

    # The same cells with the zone said on purpose, and a DST policy chosen.
    chosen = client.schedule_frame(frame, tz="UTC", dst="shift")
    assert list(chosen["outcome"]) == ["created", "existing", "existing", "created"]
    assert pd.Timestamp(chosen.loc[0, "run_at"]) == pd.Timestamp("2099-03-01 09:00", tz="UTC")
    # 02:30 does not exist in Paris that night: shifted by the jump, to 03:30 CEST.
    assert pd.Timestamp(chosen.loc[3, "run_at"]) == pd.Timestamp("2027-03-28 01:30", tz="UTC")


def test_schedule_frame_result_reads_outcome_and_whole_error_first(client: Client) -> None:
    start = pd.Timestamp.now(tz="UTC").floor("s") + pd.Timedelta(hours=2)
    frame = pd.DataFrame(
        {
            "task": ["add", "water_plant", "add"],
            "run_at": [start, start, "soon"],
            "args": ["[1, 2]", '["fern"]', "[]"],
            "labels": json.dumps(_label()),
        }
    )
    result = client.schedule_frame(frame)
    assert list(result.columns[:3]) == ["outcome", "error", "column"]
    assert list(result["outcome"]) == ["created", "rejected", "invalid"]
    error = result.loc[1, "error"]
    assert "did you mean" in error
    assert len(error) > 50
    # pandas cuts cells at 50 characters; the result (and its problems) shows errors whole.
    assert error in result._repr_html_()
    problems = result.problems
    assert error in problems._repr_html_()
    assert list(problems.index) == [1, 2]
    assert list(problems["outcome"]) == ["rejected", "invalid"]
    assert problems.loc[2, "run_at_as_written"] == "soon"
