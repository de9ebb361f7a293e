"""Recurring timetable rows: ``every`` (a pandas offset) or ``cron``, expanded inside a horizon.

Only runs at or after ``now`` and before the horizon's end are produced, so re-running the
scheduler later extends the horizon; earlier runs come out with the same instants (and so the
same idempotency keys) every time.

- A fixed ``every`` (``15min``, ``2h``: a pandas Tick) is exact elapsed time from ``run_at``.
- A calendar ``every`` (``1D``, ``1W``, ``MS``) keeps the wall-clock time in the row's zone, as
  ``pandas.date_range(run_at, freq=every)`` does; a run that lands in a DST gap or overlap
  follows the ``--dst`` policy like any other local time.
- ``cron`` follows cron's own DST rules (cronsim) in the row's zone.

The pandas-free computation (cron matches, fixed steps, DST) is ``schedkit.recurrence``,
which the dispatchers share for server-side schedules; this module adds pandas offsets and
the horizon.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import timedelta, tzinfo

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset
from pandas.tseries.offsets import BaseOffset

from schedkit.errors import InvalidArgument
from schedkit.recurrence import RecurrenceError, check_cron, cron_matches
from schedkit.timeutil import DstPolicy, localize

__all__ = [
    "MAX_RUNS_PER_ROW",
    "Expansion",
    "RecurrenceError",
    "check_cron",
    "expand_cron",
    "expand_every",
    "parse_every",
]

#: A row may not expand to more runs than this inside one horizon.
MAX_RUNS_PER_ROW = 100_000
MIN_STEP = pd.Timedelta(seconds=1)


@dataclass
class Expansion:
    """The runs of one recurring row (UTC), and DST problems of single runs (wall time, why)."""

    runs: list[pd.Timestamp] = field(default_factory=list)
    dst_errors: list[str] = field(default_factory=list)


def parse_every(text: str) -> BaseOffset:
    """A pandas offset from ``15min``, ``1D``, ``1W``...; RecurrenceError if it is not one."""
    try:
        offset = to_offset(text.strip())
    except (ValueError, TypeError) as exc:
        raise RecurrenceError(
            f"{text!r} is not a pandas offset such as 15min, 2h, 1D, 1W or MS"
        ) from exc
    if offset is None or offset.n <= 0:
        raise RecurrenceError(f"{text!r} must be a positive interval")
    if isinstance(offset, pd.offsets.Tick) and pd.Timedelta(offset) < MIN_STEP:
        raise RecurrenceError(f"{text!r} is shorter than one second")
    return offset


def expand_every(
    offset: BaseOffset,
    start: pd.Timestamp,
    zone: tzinfo,
    *,
    now: pd.Timestamp,
    end: pd.Timestamp,
    until: pd.Timestamp | None,
    count: int | None,
    dst: DstPolicy,
) -> Expansion:
    """Runs of ``start + k * offset`` in [now, end), up to ``until`` and ``count`` runs."""
    if isinstance(offset, pd.offsets.Tick):
        return Expansion(_fixed_runs(pd.Timedelta(offset), start, now, end, until, count))
    local_start = start.tz_convert(zone).tz_localize(None)
    # A day of slack on each side covers any zone offset; exact bounds are applied in UTC.
    last = min(end, until) if until is not None else end
    local_end = last.tz_convert(zone).tz_localize(None) + pd.Timedelta(days=1)
    if (local_end - local_start) > pd.Timedelta(days=MAX_RUNS_PER_ROW):
        raise RecurrenceError("run_at is too far back for a calendar interval")
    walls = pd.date_range(local_start, end=local_end, freq=offset)
    if count is not None:
        walls = walls[:count]
    expansion = Expansion()
    localized = pd.Series(walls).dt.tz_localize(zone, ambiguous="NaT", nonexistent="NaT")
    instants: list[pd.Timestamp] = []
    for wall, instant in zip(walls, localized, strict=True):
        if pd.isna(instant):  # a DST gap or overlap: rare, so the exact per-run rule is fine
            try:
                instant = pd.Timestamp(localize(wall.to_pydatetime(), zone, dst=dst))
            except InvalidArgument as exc:
                if now <= _rough_utc(wall, zone) < end:
                    expansion.dst_errors.append(exc.violations[0].description)
                continue
        instants.append(instant.tz_convert("UTC"))
    expansion.runs = [t for t in instants if now <= t < end and (until is None or t <= until)]
    _check_size(len(expansion.runs))
    return expansion


def _rough_utc(wall: pd.Timestamp, zone: tzinfo) -> pd.Timestamp:
    return pd.Timestamp(wall.to_pydatetime().replace(tzinfo=zone)).tz_convert("UTC")


def _fixed_runs(
    step: pd.Timedelta,
    start: pd.Timestamp,
    now: pd.Timestamp,
    end: pd.Timestamp,
    until: pd.Timestamp | None,
    count: int | None,
) -> list[pd.Timestamp]:
    # Arithmetic, not a generated range: a row started years ago costs nothing.
    first = 0 if start >= now else math.ceil((now - start) / step)
    stop = math.ceil((end - start) / step) if end > start else 0
    if until is not None:
        stop = min(stop, math.floor((until - start) / step) + 1 if until >= start else 0)
    if count is not None:
        stop = min(stop, count)
    if stop <= first:
        return []
    _check_size(stop - first)
    ks = np.arange(first, stop, dtype=np.int64)
    return list(pd.DatetimeIndex(start + ks * step))


def expand_cron(
    expr: str,
    start: pd.Timestamp,
    zone: tzinfo,
    *,
    now: pd.Timestamp,
    end: pd.Timestamp,
    until: pd.Timestamp | None,
    count: int | None,
) -> Expansion:
    """Cron matches from ``start`` (inclusive) in [now, end), up to ``until`` and ``count``."""
    # With a count, runs are counted from start, so iterate from there; otherwise from now.
    begin = start if count is not None else max(start, now)
    last = min(end, until + pd.Timedelta(microseconds=1)) if until is not None else end
    matches = cron_matches(expr, zone, (begin - timedelta(seconds=1)).to_pydatetime())
    runs: list[pd.Timestamp] = []
    seen = 0
    for moment in matches:
        instant = pd.Timestamp(moment)
        if instant < begin:
            continue
        if instant >= last or (count is not None and seen >= count):
            break
        seen += 1
        if instant >= now:
            runs.append(instant)
            _check_size(len(runs))
        elif seen > MAX_RUNS_PER_ROW:
            raise RecurrenceError("run_at is too far back to count runs from")
    return Expansion(runs)


def _check_size(n: int) -> None:
    if n > MAX_RUNS_PER_ROW:
        raise RecurrenceError(
            f"expands to more than {MAX_RUNS_PER_ROW:,} runs within the horizon; "
            "shorten --horizon or lengthen the interval"
        )
