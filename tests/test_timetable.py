"""The timetable parser on its own: formats, checks, DST, recurrences, keys, and fuzzing."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import schedkit
from schedkit.errors import ConfigError, InvalidArgument, SchedkitError
from schedkit.timetable.check import load_timetable
from schedkit.timetable.options import TimetableOptions
from schedkit.timetable.read import read_frame
from schedkit.timetable.schema import Timetable

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "timetable.csv"
NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


def load(text: str, **options: Any) -> Timetable:
    """A timetable from CSV text, checked at a fixed ``now``; naive times in UTC unless the
    test says otherwise (tz=None: no default zone, as schedule_frame and the CLI start)."""
    options.setdefault("now", NOW)
    options.setdefault("tz", "UTC")
    return load_timetable(io.StringIO(text), TimetableOptions(**options))


def errors_of(table: Timetable) -> list[tuple[int, str]]:
    return [(e.row, e.column) for e in table.errors]


def test_example_file_reads_without_errors() -> None:
    table = load_timetable(EXAMPLE, TimetableOptions(now=NOW, source="timetable.csv"))
    assert table.errors == []
    assert table.warnings == []
    assert table.rows == 5
    runs = table.runs
    # Three one-offs, 7 daily runs in the 7-day horizon, 5 weekday cron runs.
    assert sorted(runs["row"].value_counts().to_dict().items()) == [
        (1, 1),
        (2, 1),
        (3, 1),
        (4, 7),
        (5, 5),
    ]
    first = runs[runs["row"] == 1].iloc[0]
    assert first["run_at"] == pd.Timestamp("2099-01-20 07:00", tz="UTC")  # 08:00 in Paris
    assert first["args"] == ["fern"]
    assert first["kwargs"] == {"litres": 0.5}
    assert first["labels"] == {"team": "garden", "source": "timetable.csv"}
    assert runs[runs["row"] == 3].iloc[0]["key"] == "add-2099-06-01"


def test_read_timetable_is_public_and_takes_a_dataframe() -> None:
    frame = pd.DataFrame(
        {
            "task_name": ["add", "add"],
            "schedule_time": ["2026-02-01T10:00:00Z", "2026-02-01 11:00"],
            "args": ["[1, 2]", "[3, 4]"],
        }
    )
    runs = schedkit.read_timetable(frame, now=NOW, tz="UTC")
    assert list(runs["task"]) == ["add", "add"]
    assert list(runs["args"]) == [[1, 2], [3, 4]]
    assert list(runs["run_at"]) == [
        pd.Timestamp("2026-02-01 10:00", tz="UTC"),
        pd.Timestamp("2026-02-01 11:00", tz="UTC"),
    ]


def test_read_timetable_raises_naming_every_bad_cell() -> None:
    frame = pd.DataFrame({"task": ["add", ""], "run_at": ["2026-02-01 10:00", "tomorrow"]})
    with pytest.raises(InvalidArgument) as caught:
        schedkit.read_timetable(frame, now=NOW, tz="UTC")
    fields = [v.field for v in caught.value.violations]
    assert fields == ["row 2: run_at", "row 2: task"]


def test_missing_required_columns_name_them() -> None:
    with pytest.raises(InvalidArgument, match=r"missing required column.*run_at"):
        load("task,args\nadd,[]\n")


def test_unknown_columns_warn_and_are_ignored() -> None:
    table = load("task,run_at,colour\nadd,2026-02-01 10:00,blue\n")
    assert table.errors == []
    assert len(table.runs) == 1
    assert any("colour" in w for w in table.warnings)


def test_empty_file_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="empty"):
        load("")


def test_header_only_has_no_runs_and_no_errors() -> None:
    table = load("task,run_at,args,kwargs\n")
    assert (len(table.runs), table.errors, table.rows) == (0, [], 0)


def test_bad_json_is_a_row_error_and_other_rows_survive() -> None:
    table = load(
        "task,run_at,args,kwargs\n"
        'add,2026-02-01 10:00,"[1, 2]",\n'
        'add,2026-02-01 10:00,"[1, 2",\n'
        'add,2026-02-01 10:00,"{""x"": 1}",\n'
        'add,2026-02-01 10:00,,"[1]"\n'
        'add,2026-02-01 10:00,"[NaN]",\n'
    )
    assert errors_of(table) == [(2, "args"), (3, "args"), (4, "kwargs"), (5, "args")]
    assert list(table.runs["row"]) == [1]


def test_unquoted_json_with_commas_names_the_row() -> None:
    table = load("task,run_at,args\nadd,2026-02-01 10:00,[1, 2]\nadd,2026-02-01 11:00,[3]\n")
    assert errors_of(table) == [(1, "(row)")]
    assert "double quotes" in table.errors[0].message
    assert list(table.runs["row"]) == [2]


def test_row_numbers_count_blank_rows() -> None:
    table = load("task,run_at\nadd,2026-02-01 10:00\n\nadd,not a time\n")
    assert errors_of(table) == [(3, "run_at")]
    assert table.rows == 3


def test_times_in_mixed_formats() -> None:
    table = load(
        "task,run_at\n"
        "add,2026-02-01 10:00\n"
        "add,2026-02-01T10:00:00\n"
        "add,2026-02-01T11:00:00+01:00\n"
        "add,2026-02-01T10:00:00Z\n"
        "add,2026-02-01\n"
        "add,01/02/2026 10:00\n"
        "add,next tuesday\n"
    )
    assert errors_of(table) == [(6, "run_at"), (7, "run_at")]
    assert "ISO 8601" in table.errors[0].message
    ten = pd.Timestamp("2026-02-01 10:00", tz="UTC")
    assert list(table.runs["run_at"]) == [ten] * 4 + [pd.Timestamp("2026-02-01", tz="UTC")]


@pytest.mark.parametrize(
    ("cell", "utc"),
    [
        ("2026-02-01T10:00Z", "2026-02-01 10:00"),
        ("2026-02-01 10:00:00.5+02:00", "2026-02-01 08:00:00.5"),
        ("2026-02-01T10:00:00.25-0530", "2026-02-01 15:30:00.25"),
        ("2026-02-01T10:00 +01", "2026-02-01 09:00"),
        ("2026-02-01T10:00", "2026-02-01 09:00"),  # naive: read in the default zone
        ("2026-02-01", "2026-01-31 23:00"),  # naive midnight in the default zone
    ],
)
def test_an_offset_at_the_end_makes_a_time_aware(cell: str, utc: str) -> None:
    table = load(f"task,run_at\nadd,{cell}\n", tz="Europe/Paris")
    assert not table.errors
    assert list(table.runs["run_at"]) == [pd.Timestamp(utc, tz="UTC")]


def test_naive_times_use_the_row_zone_then_the_default() -> None:
    table = load(
        "task,run_at,tz\nadd,2026-02-01 10:00,America/New_York\nadd,2026-02-01 10:00,\n"
        "add,2026-02-01 10:00,Mars/Olympus\n",
        tz="Europe/Paris",
    )
    assert list(table.runs["run_at"]) == [
        pd.Timestamp("2026-02-01 15:00", tz="UTC"),
        pd.Timestamp("2026-02-01 09:00", tz="UTC"),
    ]
    assert errors_of(table) == [(3, "tz")]


def test_a_naive_time_without_any_zone_is_a_row_error_with_a_hint() -> None:
    # No default zone (tz=None, what schedule_frame and the scheduler start with): a naive
    # time on a row without a tz cell is refused, never read as UTC; the other rows pass.
    table = load(
        "task,run_at,tz,until,every\n"
        "add,2026-02-01 10:00,,,\n"  # naive, no zone: refused
        "add,2026-02-01 10:00,Europe/Paris,,\n"  # the row names its zone
        "add,2026-02-01T10:00:00+01:00,,,\n"  # an offset is an instant
        "add,2026-02-01T10:00:00Z,,2026-02-03 10:00,1D\n",  # a naive until, no zone
        tz=None,
    )
    assert errors_of(table) == [(1, "run_at"), (4, "until")]
    message = table.errors[0].message
    assert "'2026-02-01 10:00' has no time zone" in message
    assert "tz='UTC' if UTC is meant" in message
    assert "--tz" in message
    assert list(table.runs["row"]) == [2, 3]
    assert set(table.runs["run_at"]) == {pd.Timestamp("2026-02-01 09:00", tz="UTC")}


def test_tz_utc_reads_naive_times_as_utc_on_purpose() -> None:
    table = load("task,run_at\nadd,2026-02-01 10:00\n", tz="UTC")
    assert list(table.runs["run_at"]) == [pd.Timestamp("2026-02-01 10:00", tz="UTC")]


def test_a_cron_rule_needs_a_zone_and_an_every_rule_from_an_instant_does_not() -> None:
    table = load(
        "task,run_at,tz,every,cron,count\n"
        "add,,,,0 8 * * *,2\n"
        "add,,Europe/Paris,,0 8 * * *,2\n"
        "add,2026-01-16T08:00:00Z,,1D,,2\n",
        tz=None,
    )
    assert errors_of(table) == [(1, "cron")]
    assert "needs a time zone" in table.errors[0].message
    assert table.runs["row"].value_counts().to_dict() == {2: 2, 3: 2}


def test_an_unknown_zone_names_close_matches() -> None:
    table = load("task,run_at,tz\nadd,2026-02-01 10:00,Paris\nadd,2026-02-01 10:00,Mars\n")
    assert errors_of(table) == [(1, "tz"), (2, "tz")]
    assert "did you mean Europe/Paris?" in table.errors[0].message
    assert "use an IANA name like Europe/Paris" in table.errors[1].message


DST = "task,run_at,tz\nadd,2026-02-01 10:00,Europe/Paris\nadd,2026-03-29 02:30,Europe/Paris\n"


def test_dst_gap_is_a_row_error_naming_the_row() -> None:
    table = load(DST)
    assert errors_of(table) == [(2, "run_at")]
    assert "does not exist" in table.errors[0].message
    assert list(table.runs["row"]) == [1]


@pytest.mark.parametrize(
    ("policy", "utc"),
    [
        ("shift", "2026-03-29 01:30"),
        ("earliest", "2026-03-29 00:30"),
        ("latest", "2026-03-29 01:30"),
    ],
)
def test_dst_gap_policies(policy: str, utc: str) -> None:
    table = load(DST, dst=policy)
    assert table.errors == []
    assert table.runs["run_at"].iloc[1] == pd.Timestamp(utc, tz="UTC")


def test_dst_overlap_is_refused_unless_a_policy_says() -> None:
    text = "task,run_at,tz\nadd,2026-10-25 02:30,Europe/Paris\n"
    assert errors_of(load(text)) == [(1, "run_at")]
    assert load(text, dst="earliest").runs["run_at"].iloc[0] == pd.Timestamp(
        "2026-10-25 00:30", tz="UTC"
    )
    assert load(text, dst="latest").runs["run_at"].iloc[0] == pd.Timestamp(
        "2026-10-25 01:30", tz="UTC"
    )


def test_every_expands_inside_the_horizon_only_from_now() -> None:
    text = "task,run_at,every\nadd,2026-01-01 00:00,6h\n"
    table = load(text, horizon=timedelta(days=1))
    expected = pd.date_range("2026-01-15 12:00", periods=4, freq="6h", tz="UTC")
    assert list(table.runs["run_at"]) == list(expected)
    assert all(k.startswith("ttr:") for k in table.runs["key"])


def test_moving_the_horizon_extends_without_changing_earlier_runs() -> None:
    text = "task,run_at,every\nadd,2026-01-01 00:00,30min\n"
    first = load(text, horizon=timedelta(hours=2))
    later = load(text, now=NOW + timedelta(hours=1), horizon=timedelta(hours=2))
    overlap = set(first.runs["key"]) & set(later.runs["key"])
    assert len(overlap) == 2  # 13:00 and 13:30 come out with the same keys
    assert later.runs["key"].is_unique


def test_calendar_every_keeps_wall_time_across_dst() -> None:
    text = "task,run_at,tz,every\nadd,2026-03-27 08:00,Europe/Paris,1D\n"
    table = load(text, now=datetime(2026, 3, 27, tzinfo=UTC), horizon=timedelta(days=3))
    local = table.runs["run_at"].dt.tz_convert("Europe/Paris").dt.strftime("%H:%M")
    assert list(local) == ["08:00", "08:00", "08:00"]


def test_cron_with_count_and_until() -> None:
    text = (
        "task,run_at,cron,count,until\n"
        "add,2026-01-15 00:00,0 8 * * *,3,\n"
        "add,,0 9 * * *,,2026-01-17 09:00\n"
        "add,2026-01-15,not cron,,\n"
        "add,2026-01-15,0 8 * * *,0,\n"
    )
    table = load(text, horizon=timedelta(days=10))
    assert errors_of(table) == [(3, "cron"), (4, "count")]
    by_row = table.runs.groupby("row")["run_at"].apply(list).to_dict()
    # count runs from run_at: the 15th 08:00 is past but counted, so two are left.
    assert by_row[1] == list(pd.date_range("2026-01-16 08:00", periods=2, freq="D", tz="UTC"))
    assert by_row[2] == list(pd.date_range("2026-01-16 09:00", periods=2, freq="D", tz="UTC"))


def test_recurrence_misuse_is_a_row_error() -> None:
    table = load(
        "task,run_at,every,cron,until\n"
        "add,2026-02-01,1h,0 * * * *,\n"
        "add,2026-02-01,,,2026-03-01\n"
        "add,2026-02-01,fortnightly,,\n"
        "add,2026-01-01,1s,,\n"
    )
    assert errors_of(table) == [(1, "cron"), (2, "until"), (3, "every"), (4, "every")]


def test_derived_keys_follow_content_and_time() -> None:
    table = load(
        "task,run_at,args,key\n"
        'add,2026-02-01 10:00,"[1, 2]",\n'
        'add,2026-02-01T10:00:00Z,"[1,2]",\n'
        'add,2026-02-01 10:00,"[1, 3]",\n'
        'add,2026-02-01 10:01,"[1, 2]",\n'
        'add,2026-02-01 10:00,"[1, 2]",mine\n'
    )
    keys = list(table.runs["key"])
    assert keys[0] == keys[1]  # same task, arguments and instant, spelled differently
    assert len(set(keys[1:])) == 4
    assert keys[4] == "mine"
    again = load('task,run_at,args\nadd,2026-02-01 10:00,"[1, 2]"\n', now=NOW + timedelta(hours=1))
    assert again.runs["key"].iloc[0] == keys[0]
    other_source = load('task,run_at,args\nadd,2026-02-01 10:00,"[1, 2]"\n', source="b.csv")
    assert other_source.runs["key"].iloc[0] != keys[0]


def test_derived_keys_stay_the_same_across_versions() -> None:
    # Re-running an older timetable must find its tasks: these keys were made by earlier
    # releases, so any change to how keys are derived fails here.
    table = load(
        "task,run_at,args,priority,expires_after,queue\n"
        'add,2026-02-01 10:00,"[1, 2]",,,\n'
        'add,2026-02-01 10:00,"[1, 2]",3,30m,garden\n',
        source="garden.csv",
    )
    assert list(table.runs["key"]) == [
        "tt:c9c9a5b8c905cadd0b6527a6",
        "tt:bdbccf397907c822506c0714",
    ]


def test_a_key_on_a_recurring_row_gets_one_key_per_run() -> None:
    table = load(
        "task,run_at,every,key\nadd,2026-01-15 12:00,1h,hourly\n", horizon=timedelta(hours=2)
    )
    assert list(table.runs["key"]) == ["hourly@20260115T120000Z", "hourly@20260115T130000Z"]


def test_optional_columns_are_checked() -> None:
    table = load(
        "task,run_at,priority,expires_after,queue,labels,label.team\n"
        'add,2026-02-01,5,30min,fast,"{""a"": ""b""}",ops\n'
        "add,2026-02-01,300,,,,\n"
        "add,2026-02-01,,-5,,,\n"
        "add,2026-02-01,,90,,[1],\n"
    )
    assert errors_of(table) == [(2, "priority"), (3, "expires_after"), (4, "labels")]
    run = table.runs.iloc[0]
    assert (run["priority"], run["queue"]) == (5, "fast")
    assert run["expires_after"] == pd.Timedelta(minutes=30)
    assert run["labels"] == {"a": "b", "team": "ops"}


def test_past_policies() -> None:
    text = "task,run_at\nadd,2026-01-15 11:58\nadd,2026-01-01 00:00\nadd,2026-02-01\n"
    skip = load(text)
    assert (list(skip.past["row"]), list(skip.runs["row"])) == ([1, 2], [3])
    error = load(text, past="error")
    assert errors_of(error) == [(1, "run_at"), (2, "run_at")]
    run = load(text, past="run")
    assert list(run.runs["row"]) == [1, 2, 3]
    assert list(run.runs["moved_to_now"]) == [False, True, False]
    assert run.runs["run_at"].iloc[0] == pd.Timestamp("2026-01-15 11:58", tz="UTC")
    assert run.runs["run_at"].iloc[1] == pd.Timestamp(NOW)
    # The key still comes from the time as written, so a re-run finds the same task.
    assert run.runs["key"].iloc[1] == skip.past["key"].iloc[1]


def test_other_formats(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"task": ["add", "add"], "run_at": ["2026-02-01 10:00", "2026-02-01 11:00"]}
    )
    frame.to_parquet(tmp_path / "t.parquet")
    assert (
        len(load_timetable(tmp_path / "t.parquet", TimetableOptions(now=NOW, tz="UTC")).runs) == 2
    )
    lines = [
        json.dumps({"task": "add", "run_at": "2026-02-01 10:00", "args": [1, 2]}),
        "{not json",
        "",
        json.dumps({"task": "add", "run_at": "2026-02-01 11:00", "kwargs": {"y": 1}}),
    ]
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    table = load_timetable(tmp_path / "t.jsonl", TimetableOptions(now=NOW, tz="UTC"))
    assert errors_of(table) == [(2, "(row)")]
    assert list(table.runs["row"]) == [1, 4]
    assert table.runs["args"].iloc[0] == [1, 2]


@pytest.mark.skipif(importlib.util.find_spec("openpyxl") is not None, reason="openpyxl present")
def test_excel_without_its_reader_says_what_to_install(tmp_path: Path) -> None:
    path = tmp_path / "t.xlsx"
    path.write_bytes(b"PK\x03\x04")
    with pytest.raises(ConfigError, match="pip install openpyxl"):
        load_timetable(path, TimetableOptions(now=NOW, tz="UTC"))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="no such file"):
        load_timetable(tmp_path / "nope.csv")


def test_a_million_rows_with_three_bad_ones(tmp_path: Path) -> None:
    n = 1_000_000
    frame = pd.DataFrame(
        {
            "task": "add",
            "run_at": pd.Series(pd.date_range("2027-01-01", periods=n, freq="s")).dt.strftime(
                "%Y-%m-%d %H:%M:%S"
            ),
            "args": [f"[{i}, 1]" for i in range(n)],
        }
    )
    frame.loc[10, "args"] = "[oops"
    frame.loc[500_000, "run_at"] = "31/12/2027"
    frame.loc[n - 1, "task"] = ""
    path = tmp_path / "big.csv"
    frame.to_csv(path, index=False)
    table = load_timetable(path, TimetableOptions(now=NOW, tz="UTC"))
    assert errors_of(table) == [(11, "args"), (500_001, "run_at"), (n, "task")]
    assert len(table.runs) == n - 3
    assert table.runs["key"].is_unique


# -- fuzzing: any input parses or yields row errors, never anything else ---------------------

COLUMNS = ["task", "run_at", "args", "kwargs", "tz", "every", "cron", "count", "priority"]
cell = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            "",
            "add",
            "2026-03-29 02:30",
            "2026-02-01T10:00:00+01:00",
            "9999-12-31T23:59:59-05:00",
            "[1, 2]",
            '{"a": 1}',
            "[NaN]",
            "Europe/Paris",
            "1h",
            "0 8 * * *",
            "0 0 30 2 *",
            "3",
            "-1",
            "1e400",
            "1D",
            "1us",
        ]
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    columns=st.lists(st.sampled_from([*COLUMNS, "other"]), min_size=1, max_size=6, unique=True),
    rows=st.lists(st.lists(cell, min_size=6, max_size=6), max_size=6),
)
def test_any_table_parses_or_yields_row_errors(columns: list[str], rows: list[list[str]]) -> None:
    frame = pd.DataFrame([row[: len(columns)] for row in rows], columns=columns)
    if not {"task", "run_at"} <= set(columns):  # only a table that cannot be used at all
        with pytest.raises(SchedkitError, match="missing required column"):
            load_timetable(frame, TimetableOptions(now=NOW, tz="UTC"))
        return
    table = load_timetable(frame, TimetableOptions(now=NOW, tz="UTC", horizon=timedelta(days=2)))
    bad = {e.row for e in table.errors}
    assert set(table.runs["row"]).isdisjoint(
        bad - {e.row for e in table.errors if "a run" in e.message}
    )
    assert all(1 <= e.row <= len(rows) for e in table.errors)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_any_csv_text_parses_or_is_refused_cleanly(text: str) -> None:
    with contextlib.suppress(InvalidArgument):  # a file-level refusal is fine, nothing else
        load("task,run_at,args\n" + text)


def test_read_frame_numbers_rows_from_one() -> None:
    frame, errors = read_frame(io.StringIO("task,run_at\na,b\nc,d\n"))
    assert (list(frame.index), errors) == ([1, 2], [])
