"""schedkit.recurrence: the pandas-free times both the timetable and the dispatchers use."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from schedkit.recurrence import Recurrence, RecurrenceError, jitter_for

BERLIN = ZoneInfo("Europe/Berlin")


def _local_day(year: int, month: int, day: int) -> tuple[datetime, datetime]:
    begin = datetime(year, month, day, tzinfo=BERLIN)
    return begin.astimezone(UTC), (begin + timedelta(days=1)).astimezone(UTC)


def _hours_of(begin: datetime, end: datetime) -> int:
    # The oracle: the real hours between two local midnights, counted in UTC.
    return int((end - begin) / timedelta(hours=1))


@pytest.mark.parametrize(("day", "expected"), [((2026, 10, 25), 25), ((2026, 3, 29), 23)])
def test_hourly_cron_in_berlin_runs_every_real_hour_on_dst_days(
    day: tuple[int, int, int], expected: int
) -> None:
    begin, end = _local_day(*day)
    times = Recurrence(cron=("0 * * * *",), tz="Europe/Berlin").times(begin, end, 1000)
    assert len(times) == expected == _hours_of(begin, end)
    assert times == [begin + timedelta(hours=h) for h in range(expected)]


def test_earliest_places_each_wall_time_once_on_the_fall_back_day() -> None:
    begin, end = _local_day(2026, 10, 25)
    times = Recurrence(cron=("0 * * * *",), tz="Europe/Berlin", dst="earliest").times(
        begin, end, 1000
    )
    walls = [t.astimezone(BERLIN).replace(tzinfo=None) for t in times]
    assert len(times) == 24
    assert len(set(walls)) == 24


def test_shift_runs_a_gap_time_once_at_the_end_of_the_gap() -> None:
    begin, end = _local_day(2026, 3, 29)
    times = Recurrence(cron=("0 * * * *",), tz="Europe/Berlin", dst="shift").times(begin, end, 1000)
    assert len(times) == 23  # 02:00 does not exist: shifted onto 03:00, which runs once


def test_every_is_exact_elapsed_time_from_start_and_unions_with_cron() -> None:
    start = datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)
    rec = Recurrence(cron=("0 * * * *",), every=timedelta(minutes=30), start=start)
    times = rec.times(start, start + timedelta(hours=2), 100)
    expected = sorted(
        {start + timedelta(minutes=30 * k) for k in range(4)}
        | {datetime(2026, 1, 1, h, tzinfo=UTC) for h in (1, 2)}
    )
    assert times == [t for t in expected if t < start + timedelta(hours=2)]


def test_end_and_limit_bound_the_times() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rec = Recurrence(every=timedelta(seconds=1), start=start, end=start + timedelta(seconds=9))
    assert len(rec.times(start, start + timedelta(days=365 * 100), 1_000_000)) == 10
    endless = Recurrence(every=timedelta(seconds=1))
    assert len(endless.times(start, start + timedelta(days=365 * 100), 7)) == 7


@pytest.mark.parametrize(
    ("rec", "words"),
    [
        (Recurrence(), "cron expressions, every"),
        (Recurrence(cron=("61 * * * *",)), "not a cron expression"),
        (Recurrence(every=timedelta(milliseconds=5)), "at least one second"),
        (Recurrence(every=timedelta(minutes=1), tz="Mars/Olympus"), "unknown time zone"),
    ],
)
def test_bad_recurrences_say_why(rec: Recurrence, words: str) -> None:
    with pytest.raises(RecurrenceError, match=words):
        rec.check()


def test_jitter_is_the_same_for_one_run_and_below_the_bound() -> None:
    nominal = datetime(2026, 1, 1, tzinfo=UTC)
    one = jitter_for("s", nominal, timedelta(minutes=1))
    assert one == jitter_for("s", nominal, timedelta(minutes=1)) < timedelta(minutes=1)
    assert jitter_for("s", nominal, timedelta(0)) == timedelta(0)


def test_exclusions_drop_the_times_they_match_in_the_zone() -> None:
    begin = datetime(2026, 12, 21, tzinfo=BERLIN).astimezone(UTC)  # a Monday
    end = begin + timedelta(days=14)
    rec = Recurrence(
        cron=("0 8 * * *",),
        tz="Europe/Berlin",
        exclude=("* * * * sat,sun", "* * 24-26 12 *"),
    )
    days = [t.astimezone(BERLIN).date() for t in rec.times(begin, end, 100)]
    oracle = [
        d
        for d in (begin.astimezone(BERLIN).date() + timedelta(days=n) for n in range(14))
        if d.weekday() < 5 and not (d.month == 12 and 24 <= d.day <= 26)
    ]
    assert days == oracle
    with pytest.raises(RecurrenceError, match="not a cron expression"):
        Recurrence(cron=("0 8 * * *",), exclude=("nope",)).check()
