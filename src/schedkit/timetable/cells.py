"""Checking a timetable's cells column by column: each parser turns a column of text cells into
values, and every bad cell into a row error naming its row and column.

Columns are checked whole (vectorised, each distinct text parsed once), so a million rows cost
seconds; the rare slow path (a DST gap, a bad label) is per row.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import datetime, tzinfo
from typing import Any

import numpy as np
import pandas as pd

from schedkit.errors import InvalidArgument
from schedkit.timetable.schema import (
    ALIASES,
    LABEL_PREFIX,
    OPTIONAL,
    REQUIRED,
    SOURCE_LABEL,
    RowError,
)
from schedkit.timeutil import DstPolicy, localize, unknown_zone_message, zone

# ASCII classes and \Z instead of \d, \s and $: with those, pandas can hand the match to
# pyarrow's RE2 (8x faster over a million cells) instead of running Python's re per cell.
_OFFSET_AT_END = re.compile(
    r"[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]+)?)?[ \t]*(?:[Zz]|[+-][0-9]{2}(?::?[0-9]{2})?)\Z"
)
_EMPTY_DICT: dict[str, Any] = {}
#: Later run times are refused: beyond it pandas and the wire lose precision or overflow.
LATEST = pd.Timestamp("9000-01-01", tz="UTC")


class RowErrors:
    """Row errors gathered column by column, with the set of bad rows."""

    def __init__(self, initial: Iterable[RowError] = ()) -> None:
        self.items: list[RowError] = list(initial)
        self.rows: set[int] = {e.row for e in self.items}

    def add(self, rows: Iterable[int], column: str, message: str | Iterable[str]) -> None:
        rows = [int(r) for r in rows]
        messages = [message] * len(rows) if isinstance(message, str) else list(message)
        for row, text in zip(rows, messages, strict=True):
            self.items.append(RowError(row, column, text))
        self.rows.update(rows)

    def mask(self, frame: pd.DataFrame | pd.Series) -> np.ndarray[Any, np.dtype[np.bool_]]:
        """True for rows of ``frame`` with no error."""
        return ~np.asarray(frame.index.isin(list(self.rows)), dtype=bool)


def normalise_columns(frame: pd.DataFrame, warned: list[str]) -> pd.DataFrame:
    renamed: dict[Any, str] = {}
    unknown: list[str] = []
    for column in frame.columns:
        name = str(column).strip()
        lower = name.lower()
        if lower.startswith(LABEL_PREFIX) and len(name) > len(LABEL_PREFIX):
            renamed[column] = LABEL_PREFIX + name[len(LABEL_PREFIX) :]
        elif lower in ALIASES:
            renamed[column] = ALIASES[lower]
        elif lower in REQUIRED or lower in OPTIONAL:
            renamed[column] = lower
        else:
            renamed[column] = name
            unknown.append(name or "(unnamed)")
    names = list(renamed.values())
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InvalidArgument.for_field(
            "columns",
            f"column(s) given twice: {', '.join(twice)} (task_name and schedule_time are the "
            "old names of task and run_at; keep one of each)",
        )
    if unknown:
        warned.append(
            f"unknown column(s) ignored: {', '.join(unknown)}; known are "
            f"{', '.join(REQUIRED + OPTIONAL)} and label.<name>"
        )
    frame = frame.rename(columns=renamed)
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        found = ", ".join(str(c) for c in frame.columns) or "none"
        raise InvalidArgument.for_field(
            "columns",
            f"missing required column(s) {', '.join(missing)} (found: {found}); a timetable "
            "needs at least task and run_at",
        )
    return frame


def text_cells(column: pd.Series) -> pd.Series:
    """Cells as stripped str, '' for missing; lists and dicts (JSON lines) as JSON text."""
    if pd.api.types.infer_dtype(column, skipna=True) not in ("string", "empty"):
        column = column.map(_cell_text, na_action="ignore")
    return column.astype("str").fillna("").str.strip()


def _cell_text(value: Any) -> str:
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # Excel and Parquet hand integers over as floats
    if isinstance(value, pd.Timestamp | datetime):
        return value.isoformat()
    return str(value)


def column_cells(frame: pd.DataFrame, name: str) -> pd.Series:
    if name in frame.columns:
        return text_cells(frame[name])
    return pd.Series("", index=frame.index, dtype="str")


#: What a row whose naive time has no zone is told (the CLI's and the frame's way to say it).
NO_ZONE_HINT = (
    "give the row a tz cell (e.g. Europe/Paris), an offset (+01:00 or Z), or a default zone: "
    "tz='Europe/Paris' (schedule_frame), --tz Europe/Paris (scheduler); tz='UTC' if UTC is meant"
)


class Zones:
    """Each row's zone name ('' for the default) and the tzinfo of every name used.

    ``default`` None: rows without a ``tz`` cell have no zone, and their naive times are
    row errors (:data:`NO_ZONE_HINT`) rather than guesses.
    """

    def __init__(self, names: pd.Series, default: tzinfo | None, errors: RowErrors) -> None:
        self.names = names
        self.by_name: dict[str, tzinfo] = {}
        for name in names.unique():
            if name == "":
                if default is not None:
                    self.by_name[""] = default
                continue
            try:
                self.by_name[name] = zone(name)
            except InvalidArgument:
                rows = names.index[(names == name).to_numpy()]
                errors.add(rows, "tz", unknown_zone_message(name))

    def of(self, row: int) -> tzinfo | None:
        """The zone of one row (None: no tz cell and no default zone)."""
        return self.by_name.get(self.names[row])

    def unzoned(self) -> pd.Series:
        """True for rows with no zone at all: no tz cell and no default."""
        return (self.names == "") & ("" not in self.by_name)


def times(
    values: pd.Series, zones: Zones, column: str, dst: DstPolicy, errors: RowErrors
) -> pd.Series:
    """UTC instants of ISO 8601 cells; NaT for empty and bad cells (bad ones are row errors)."""
    result = pd.Series(pd.NaT, index=values.index, dtype="datetime64[us, UTC]")
    given = values != ""
    aware = given & values.str.contains(_OFFSET_AT_END, regex=True)
    if aware.any():
        result[aware] = pd.to_datetime(
            values[aware], format="ISO8601", utc=True, errors="coerce"
        ).astype("datetime64[us, UTC]")
    naive = given & ~aware
    reported: list[int] = []
    walls = pd.Series(pd.NaT, index=values.index, dtype="datetime64[us]")
    if naive.any():
        walls[naive] = pd.to_datetime(values[naive], format="ISO8601", errors="coerce").astype(
            "datetime64[us]"
        )
        names = zones.names[naive]
        for name, place in zones.by_name.items():
            in_zone = names.index[(names == name).to_numpy()]
            if not len(in_zone):
                continue
            local = walls[in_zone].dt.tz_localize(place, ambiguous="NaT", nonexistent="NaT")
            result[in_zone] = local.dt.tz_convert("UTC")
            # A DST gap or overlap: rare, so the exact per-row rule (and its message) is fine.
            for row in in_zone[(local.isna() & walls[in_zone].notna()).to_numpy()]:
                try:
                    instant = localize(walls[row].to_pydatetime(), place, dst=dst, field=column)
                    result[row] = pd.Timestamp(instant).tz_convert("UTC")
                except InvalidArgument as exc:
                    errors.add([row], column, exc.violations[0].description)
                    reported.append(row)
    # A time that reads but has no zone: refused with the hint. One that does not read at all
    # gets the format message below, zone or not.
    no_zone = (naive & zones.unzoned() & walls.notna()).to_numpy()
    if no_zone.any():
        errors.add(
            values.index[no_zone],
            column,
            (f"{v!r} has no time zone; {NO_ZONE_HINT}" for v in values[no_zone]),
        )
    known = (zones.names.isin(list(zones.by_name)) | zones.unzoned()).to_numpy()
    bad = given & result.isna() & ~values.index.isin(reported) & known & ~no_zone
    errors.add(
        values.index[bad.to_numpy()],
        column,
        (
            f"{v!r} is not an ISO 8601 time such as 2026-01-20 08:00 or 2026-01-20T08:00:00+01:00"
            for v in values[bad]
        ),
    )
    return result


def json_cells(
    values: pd.Series, column: str, kind: type, example: str, errors: RowErrors
) -> tuple[pd.Series, pd.Series]:
    """Parsed JSON cells and their canonical text, parsing each distinct text once."""
    codes, uniques = pd.factorize(values)
    parsed: list[Any] = []
    canonical: list[str] = []
    problems: dict[int, str] = {}
    for number, text in enumerate(np.asarray(uniques, dtype=object).tolist()):
        if text == "":
            parsed.append(kind())
            canonical.append(json.dumps(kind()))  # an empty cell is the same task as [] or {}
            continue
        try:
            value = _DECODER.decode(text)
        except ValueError as exc:
            problems[number] = f"not valid JSON ({exc}); expected {example}"
            value = kind()
        if number not in problems and not isinstance(value, kind):
            problems[number] = f"expected {example}, got {type(value).__name__}"
            value = kind()
        parsed.append(value)
        canonical.append(_CANONICAL.encode(value))
    for number, message in problems.items():
        errors.add(values.index[codes == number], column, message)
    objects = np.empty(len(parsed), dtype=object)
    objects[:] = parsed
    text_values = np.asarray(canonical, dtype=object)
    return (
        pd.Series(objects[codes] if len(codes) else [], index=values.index, dtype=object),
        pd.Series(text_values[codes] if len(codes) else [], index=values.index, dtype=object),
    )


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Made once: json.loads and json.dumps with options build a new coder on every call.
_DECODER = json.JSONDecoder(parse_constant=_no_constant)
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False)


def priorities(values: pd.Series, errors: RowErrors) -> pd.Series:
    numbers = pd.to_numeric(values.where(values != ""), errors="coerce")
    given = values != ""
    bad = given & ~(numbers.notna() & (numbers % 1 == 0) & numbers.between(0, 255))
    errors.add(values.index[bad.to_numpy()], "priority", "must be a whole number from 0 to 255")
    result = pd.Series(None, index=values.index, dtype=object)
    ok = given & ~bad
    result[ok] = numbers[ok].astype(int).astype(object)
    return result


def expiries(values: pd.Series, errors: RowErrors) -> pd.Series:
    given = values != ""
    seconds = pd.to_numeric(values.where(given), errors="coerce")
    seconds = seconds.where(seconds.abs() < 1e10)  # ~300 years; beyond that pandas overflows
    result = pd.to_timedelta(seconds, unit="s", errors="coerce")
    words = given & seconds.isna()
    if words.any():
        result[words] = pd.to_timedelta(values[words], errors="coerce")
    bad = given & ~(result > pd.Timedelta(0))
    errors.add(
        values.index[bad.to_numpy()],
        "expires_after",
        "must be a positive duration such as 30min, 1h or a number of seconds",
    )
    return result.where(~bad)


def counts(values: pd.Series, errors: RowErrors) -> pd.Series:
    numbers = pd.to_numeric(values.where(values != ""), errors="coerce")
    bad = (values != "") & ~(numbers.notna() & (numbers % 1 == 0) & (numbers >= 1))
    errors.add(values.index[bad.to_numpy()], "count", "must be a whole number of runs, 1 or more")
    return numbers.where(~bad)


def labels_of(
    cells: dict[str, pd.Series], label_columns: list[str], source: str, errors: RowErrors
) -> tuple[pd.Series, pd.Series]:
    """Per-row label dicts (the source label included) and their canonical text."""
    texts = cells["labels"]
    index = texts.index
    if (texts == "").all() and not label_columns:
        # The common case: every row shares one dict, nothing to do per row.
        shared = {SOURCE_LABEL: source} if source else _EMPTY_DICT
        values = pd.Series([shared] * len(index), index=index, dtype=object)
        return values, pd.Series("", index=index, dtype=object)
    parsed, _ = json_cells(texts, "labels", dict, 'a JSON object such as {"team": "ops"}', errors)
    merged: list[dict[str, str]] = []
    canonical: list[str] = []
    extra = [(c[len(LABEL_PREFIX) :], cells[c].to_numpy()) for c in label_columns]
    for position, (row, given) in enumerate(zip(index, parsed, strict=True)):
        labels: dict[str, str] = {}
        for name, value in given.items():
            if isinstance(value, dict | list):
                errors.add([row], "labels", f"label {name!r} must be a string, not JSON {value}")
                continue
            labels[str(name)] = value if isinstance(value, str) else json.dumps(value)
        for name, column in extra:
            if column[position] != "":
                labels[name] = column[position]
        canonical.append(json.dumps(labels, sort_keys=True, separators=(",", ":")))
        if source:
            labels[SOURCE_LABEL] = source
        merged.append(labels)
    return (
        pd.Series(merged, index=index, dtype=object),
        pd.Series(canonical, index=index, dtype=object),
    )
