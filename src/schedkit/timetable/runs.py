"""From checked rows to runs: recurring rows expanded, empty keys derived, past runs set apart."""

from __future__ import annotations

import hashlib
from datetime import UTC, timedelta
from typing import Any

import numpy as np
import pandas as pd

from schedkit.timetable.cells import RowErrors, Zones
from schedkit.timetable.recurrence import (
    RecurrenceError,
    check_cron,
    expand_cron,
    expand_every,
    parse_every,
)
from schedkit.timetable.schema import KEY_PREFIX, RECURRING_KEY_PREFIX, RowError
from schedkit.timeutil import DstPolicy, PastPolicy


def expand(
    rules: pd.DataFrame,
    cells: dict[str, pd.Series],
    zones: Zones,
    until: pd.Series,
    count: pd.Series,
    *,
    now: pd.Timestamp,
    end: pd.Timestamp,
    dst: DstPolicy,
    errors: RowErrors,
) -> pd.DataFrame:
    """One row per run of each recurring row; runs get their row's number as index."""
    rows: list[int] = []
    instants: list[pd.Timestamp] = []
    for row in rules.index:
        if row in errors.rows:
            continue
        every, cron = cells["every"][row], cells["cron"][row]
        start: pd.Timestamp = rules.at[row, "run_at"]  # type: ignore[assignment]
        last = None if pd.isna(until[row]) else until[row]
        limit = None if pd.isna(count[row]) else int(count[row])
        column = "every" if every else "cron"
        try:
            if every:
                expansion = expand_every(
                    parse_every(every),
                    start,
                    # No zone: the start was an instant (an offset), so steps are in UTC.
                    zones.of(row) or UTC,
                    now=now,
                    end=end,
                    until=last,
                    count=limit,
                    dst=dst,
                )
            else:
                check_cron(cron)
                expansion = expand_cron(
                    cron,
                    now if pd.isna(start) else start,
                    zones.of(row) or UTC,  # never None here: unzoned cron rows are refused
                    now=now,
                    end=end,
                    until=last,
                    count=limit,
                )
        except RecurrenceError as exc:
            errors.add([row], column, str(exc))
            continue
        for message in expansion.dst_errors:
            errors.items.append(RowError(int(row), "run_at", f"a run of this row: {message}"))
        rows += [int(row)] * len(expansion.runs)
        instants += expansion.runs
    expanded = rules.loc[rows].copy()
    if len(expanded):
        expanded["run_at"] = pd.DatetimeIndex(instants).as_unit("us")
    return expanded


def with_keys(runs: pd.DataFrame, source: str, recurring: np.ndarray[Any, Any]) -> pd.DataFrame:
    """Fill empty keys from the run's content and time (blake2b: stable across versions)."""
    runs = runs.copy()
    keys = runs["key"].to_numpy(dtype=object)
    recurring = np.asarray(recurring, dtype=bool)
    given = keys != ""
    if (given & recurring).any():
        # A key given on a recurring row names the rule; each run needs a key of its own.
        stamps = runs["run_at"].dt.strftime("%Y%m%dT%H%M%SZ").to_numpy(dtype=object)
        both = given & recurring
        keys[both] = keys[both] + "@" + stamps[both]
    derive = np.flatnonzero(~given)
    if len(derive):
        every_run = len(derive) == len(keys)  # the usual case: no indexing at all

        # Plain lists and one join per run: faster here than pandas string columns.
        def texts(values: Any) -> list[str]:
            cells = np.asarray(values, dtype=object)
            return [str(v) for v in (cells if every_run else cells[derive]).tolist()]

        millis = runs["run_at"].dt.as_unit("ms").astype("int64").to_numpy()[derive]
        expires = runs["expires_after"].to_numpy()[derive].astype("timedelta64[ms]")
        missing = np.isnat(expires)
        expires_ms = (
            [""] * len(derive)  # the usual case; formatting a million NaT costs 0.2 s
            if missing.all()
            else np.where(missing, "", expires.astype(np.int64).astype(str)).tolist()
        )
        priorities = ["" if p is None or p != p else str(p) for p in runs["priority"].iloc[derive]]
        columns = zip(
            texts(runs["task"]),
            texts(runs["_args"]),
            texts(runs["_kwargs"]),
            texts(runs["queue"]),
            priorities,
            expires_ms,
            texts(runs["_labels"]),
            list(map(str, millis.tolist())),
            strict=True,
        )
        blake2b = hashlib.blake2b
        tail = "\x1f" + source
        prefixes = np.where(recurring[derive], RECURRING_KEY_PREFIX, KEY_PREFIX).tolist()
        keys[derive] = [
            prefix + blake2b(("\x1f".join(parts) + tail).encode(), digest_size=12).hexdigest()
            for prefix, parts in zip(prefixes, columns, strict=True)
        ]
    runs["key"] = keys
    return runs


def apply_past(
    runs: pd.DataFrame,
    past: PastPolicy,
    now: pd.Timestamp,
    tolerance: timedelta,
    errors: RowErrors,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    late = (runs["run_at"] < now).to_numpy()
    if not late.any():
        return runs, runs.iloc[:0]
    if past == "skip":
        return runs[~late], runs[late]
    if past == "error":
        errors.add(
            runs.index[late],
            "run_at",
            (f"{t.isoformat()} is in the past (--past error)" for t in runs["run_at"][late]),
        )
        return runs[~late], runs.iloc[:0]
    # past == "run": recent enough runs keep their time, older ones run now. A margin keeps a
    # time just inside the server's tolerance from crossing it on the way there.
    margin = min(pd.Timedelta(tolerance) / 2, pd.Timedelta(seconds=30))
    too_old = (runs["run_at"] < now - pd.Timedelta(tolerance) + margin).to_numpy()
    runs = runs.copy()
    runs.loc[too_old, "run_at"] = now
    runs.loc[too_old, "moved_to_now"] = True
    return runs, runs.iloc[:0]
