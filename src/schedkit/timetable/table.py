"""Timetables: read a table of task runs with pandas, check every cell, expand recurrences.

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

import hashlib
import importlib.util
import io
import json
import re
import sys
import warnings
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from schedkit.errors import ConfigError, FieldViolation, InvalidArgument
from schedkit.model import utc_now
from schedkit.timetable.recurrence import (
    RecurrenceError,
    check_cron,
    expand_cron,
    expand_every,
    parse_every,
)
from schedkit.timeutil import DST_POLICIES, PAST_POLICIES, DstPolicy, PastPolicy, localize, zone

Source = str | Path | IO[str] | IO[bytes] | pd.DataFrame

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
FORMATS = {
    ".csv": "csv",
    ".txt": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".xlsx": "excel",
    ".xlsm": "excel",
    ".xls": "excel",
    ".ods": "excel",
}
# Derived keys: one-off runs and recurrence runs differ, so --sync can tell them apart.
KEY_PREFIX = "tt:"
RECURRING_KEY_PREFIX = "ttr:"
# ASCII classes and \Z instead of \d, \s and $: with those, pandas can hand the match to
# pyarrow's RE2 (8x faster over a million cells) instead of running Python's re per cell.
_OFFSET_AT_END = re.compile(
    r"[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]+)?)?[ \t]*(?:[Zz]|[+-][0-9]{2}(?::?[0-9]{2})?)\Z"
)
_LATEST = pd.Timestamp("9000-01-01", tz="UTC")
_EMPTY_DICT: dict[str, Any] = {}


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


def format_of(path: str | Path) -> str:
    """The reader a file name asks for: csv (also ``-``), parquet, jsonl or excel."""
    if str(path) == "-":
        return "csv"
    return FORMATS.get(Path(path).suffix.lower(), "csv")


# -- reading ----------------------------------------------------------------------------------


def read_frame(
    timetable: Source, *, format: str | None = None
) -> tuple[pd.DataFrame, list[RowError]]:
    """The raw cells of a timetable, indexed by row number, and rows unreadable as such."""
    if isinstance(timetable, pd.DataFrame):
        frame = timetable.reset_index(drop=True)
        frame.index = pd.RangeIndex(1, len(frame) + 1)
        return frame, []
    kind = format or (format_of(timetable) if isinstance(timetable, str | Path) else "csv")
    if (
        isinstance(timetable, str | Path)
        and str(timetable) != "-"
        and not Path(timetable).is_file()
    ):
        raise InvalidArgument.for_field("timetable", f"{timetable}: no such file")
    if kind == "csv":
        return _read_csv(sys.stdin if str(timetable) == "-" else timetable)
    if kind == "jsonl":
        return _read_jsonl(timetable)
    if kind == "parquet":
        frame = _optional_reader(
            lambda: pd.read_parquet(timetable),  # type: ignore[arg-type]
            "Parquet",
            "pyarrow",
        )
    elif kind == "excel":
        _need_excel_reader(timetable)
        frame = _optional_reader(
            lambda: pd.read_excel(timetable, dtype=object), "Excel", "openpyxl"
        )
    else:
        raise InvalidArgument.for_field(
            "format", f"unknown format {kind!r}: use csv, parquet, jsonl or excel"
        )
    frame.index = pd.RangeIndex(1, len(frame) + 1)
    return frame, []


def _need_excel_reader(timetable: Any) -> None:
    # pandas looks at the file before importing its reader, so check the reader first.
    suffix = Path(str(timetable)).suffix.lower() if isinstance(timetable, str | Path) else ""
    module, package = {".xls": ("xlrd", "xlrd"), ".ods": ("odf", "odfpy")}.get(
        suffix, ("openpyxl", "openpyxl")
    )
    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"reading Excel files ({suffix or 'xlsx'}) needs the optional package {package}: "
            f"pip install {package}"
        )


def _optional_reader(read: Any, what: str, package: str) -> pd.DataFrame:
    try:
        frame: pd.DataFrame = read()
    except ImportError as exc:
        raise ConfigError(
            f"reading {what} files needs the optional package {package}: "
            f"pip install {package}  ({exc})"
        ) from exc
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InvalidArgument.for_field("timetable", f"cannot read as {what}: {exc}") from exc
    return frame


def _read_csv(source: Any) -> tuple[pd.DataFrame, list[RowError]]:
    # header=None: the header is read as a row, so a data row with a cell too many is a bad
    # line (reported) instead of silently turning the first column into the index.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            raw = pd.read_csv(
                source,
                header=None,
                dtype=str,
                keep_default_na=False,
                skip_blank_lines=False,
                on_bad_lines="warn",
                skipinitialspace=True,
            )
        except pd.errors.EmptyDataError as exc:
            raise InvalidArgument.for_field(
                "timetable", "the file is empty: it needs a header row naming task and run_at"
            ) from exc
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
            raise InvalidArgument.for_field("timetable", f"not readable as CSV: {exc}") from exc
    errors: list[RowError] = []
    for warning in caught:
        # pandas numbers records from 1 with the header: record N is data row N - 1.
        for match in re.finditer(
            r"Skipping line (\d+): expected (\d+) fields, saw (\d+)", str(warning.message)
        ):
            record, expected, saw = (int(g) for g in match.groups())
            errors.append(
                RowError(
                    record - 1,
                    "(row)",
                    f"expected {expected} cells, found {saw}: put cells that hold commas "
                    'in double quotes, like "[1, 2]"',
                )
            )
    skipped = np.array([e.row + 1 for e in errors], dtype=np.int64)
    total = len(raw) + len(skipped)
    kept = np.ones(total, dtype=bool)  # a mask, not setdiff1d: that sorts a million numbers
    kept[skipped - 1] = False
    records = np.flatnonzero(kept) + 1
    frame = raw.iloc[1:].copy()
    frame.columns = pd.Index([str(c) for c in raw.iloc[0].fillna("")], dtype=object)
    frame.index = pd.Index(records[1:] - 1)
    return frame, errors


def _read_jsonl(source: Any) -> tuple[pd.DataFrame, list[RowError]]:
    # Line by line, so one bad line is a row error and not a lost file.
    if isinstance(source, str | Path):
        text = sys.stdin.read() if str(source) == "-" else Path(source).read_text("utf-8")
    else:
        raw = source.read()
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    records: list[dict[str, Any]] = []
    numbers: list[int] = []
    errors: list[RowError] = []
    for number, line in enumerate(io.StringIO(text), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            errors.append(RowError(number, "(row)", f"not a JSON object: {exc}"))
            continue
        if not isinstance(record, dict):
            errors.append(RowError(number, "(row)", "each line must be a JSON object"))
            continue
        records.append(record)
        numbers.append(number)
    frame = pd.DataFrame.from_records(records) if records else pd.DataFrame()
    frame.index = pd.Index(numbers, dtype=np.int64)
    if not records and not errors:
        raise InvalidArgument.for_field("timetable", "the file is empty: no JSON lines")
    return frame, errors


# -- checking ---------------------------------------------------------------------------------


class _Errors:
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


def _normalise_columns(frame: pd.DataFrame, warned: list[str]) -> pd.DataFrame:
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


def _text(column: pd.Series) -> pd.Series:
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


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    if name in frame.columns:
        return _text(frame[name])
    return pd.Series("", index=frame.index, dtype="str")


def check_timetable(
    frame: pd.DataFrame,
    *,
    tz: str | tzinfo = "UTC",
    dst: DstPolicy = "raise",
    past: PastPolicy = "skip",
    horizon: timedelta = timedelta(days=7),
    source: str = "",
    now: datetime | None = None,
    past_tolerance: timedelta = timedelta(minutes=5),
    read_errors: Iterable[RowError] = (),
) -> Timetable:
    """Check raw cells (from :func:`read_frame`) and expand them into runs; never raises for
    a bad row, only for a table that cannot be used at all (missing columns, bad options)."""
    if dst not in DST_POLICIES:
        raise InvalidArgument.for_field("dst", f"must be one of {', '.join(DST_POLICIES)}")
    if past not in PAST_POLICIES:
        raise InvalidArgument.for_field("past", f"must be one of {', '.join(PAST_POLICIES)}")
    default_zone = zone(tz, field="tz")
    moment = pd.Timestamp(now or utc_now()).tz_convert("UTC")
    horizon_end = moment + pd.Timedelta(horizon)
    messages: list[str] = []
    frame = _normalise_columns(frame, messages)
    errors = _Errors(read_errors)
    # Blank rows are counted for numbering and otherwise ignored.
    cells = {name: _column(frame, name) for name in (*REQUIRED, *OPTIONAL)}
    label_columns = [c for c in frame.columns if str(c).startswith(LABEL_PREFIX)]
    for name in label_columns:
        cells[name] = _text(frame[name])
    filled = pd.Series(False, index=frame.index)
    for values in cells.values():
        filled |= values != ""
    for name in frame.columns:
        if name not in cells:
            filled |= _text(frame[name]) != ""
    keep = filled.to_numpy()
    if not keep.all():  # a copy of every column costs a second on a million rows
        cells = {name: values[keep] for name, values in cells.items()}
    index = frame.index[keep]

    task = cells["task"]
    errors.add(task.index[task == ""], "task", "required: a task name")

    zones = _Zones(cells["tz"], default_zone, errors)
    run_at = _times(cells["run_at"], zones, "run_at", dst, errors)
    until = _times(cells["until"], zones, "until", dst, errors)
    for name, values in (("run_at", run_at), ("until", until)):
        beyond = (values > _LATEST).to_numpy()
        errors.add(values.index[beyond], name, "later than the year 9000")
    recurring_every = cells["every"] != ""
    recurring_cron = cells["cron"] != ""
    both = recurring_every & recurring_cron
    errors.add(index[both.to_numpy()], "cron", "give every or cron, not both")
    needs_time = (cells["run_at"] == "") & ~recurring_cron
    errors.add(index[needs_time.to_numpy()], "run_at", "required: when the task runs")

    args, args_text = _json_cells(cells["args"], "args", list, "a JSON list such as [1, 2]", errors)
    kwargs, kwargs_text = _json_cells(
        cells["kwargs"], "kwargs", dict, 'a JSON object such as {"litres": 2}', errors
    )
    priority = _priority(cells["priority"], errors)
    expires = _expires(cells["expires_after"], errors)
    labels, labels_text = _labels(cells, label_columns, source, errors)
    count = _count(cells["count"], errors)
    plain = ~(recurring_every | recurring_cron)
    for name, values in (("until", cells["until"]), ("count", cells["count"])):
        stray = plain & (values != "")
        errors.add(index[stray.to_numpy()], name, f"{name} needs every or cron on the same row")

    base = pd.DataFrame(
        {
            "row": index.to_numpy(dtype=np.int64),
            "task": task,
            "run_at": run_at,
            "args": args,
            "kwargs": kwargs,
            "key": cells["key"],
            "queue": cells["queue"],
            "priority": priority,
            "expires_after": expires,
            "labels": labels,
            "moved_to_now": False,
            "_args": args_text,
            "_kwargs": kwargs_text,
            "_labels": labels_text,
        },
        index=index,
    )
    one_off = base[(plain.to_numpy()) & errors.mask(base)]
    repeated = _expand(
        base[(~plain).to_numpy()],
        cells,
        zones,
        until,
        count,
        now=moment,
        end=horizon_end,
        dst=dst,
        errors=errors,
    )
    runs = pd.concat([one_off, repeated]) if len(repeated) else one_off
    runs = runs[errors.mask(runs)]
    runs = _with_keys(runs, source, recurring=runs.index.isin(repeated.index))
    runs, past_runs = _apply_past(runs, past, moment, past_tolerance, errors)
    return Timetable(
        runs=_public(runs),
        past=_public(past_runs),
        errors=sorted(errors.items, key=lambda e: (e.row, e.column)),
        warnings=messages,
        rows=max([int(frame.index.max()) if len(frame) else 0, *(e.row for e in errors.items)]),
        now=moment,
        horizon_end=horizon_end,
        bad_rows=errors.rows,
    )


def _public(runs: pd.DataFrame) -> pd.DataFrame:
    return runs.loc[:, list(RUN_COLUMNS)].reset_index(drop=True)


class _Zones:
    """Each row's zone name ('' for the default) and the tzinfo of every name used."""

    def __init__(self, names: pd.Series, default: tzinfo, errors: _Errors) -> None:
        self.names = names
        self.by_name: dict[str, tzinfo] = {}
        for name in names.unique():
            if name == "":
                self.by_name[""] = default
                continue
            try:
                self.by_name[name] = zone(name)
            except InvalidArgument:
                rows = names.index[(names == name).to_numpy()]
                errors.add(
                    rows, "tz", f"unknown time zone {name!r}; use an IANA name like Europe/Paris"
                )

    def of(self, row: int) -> tzinfo:
        """The zone of one row."""
        return self.by_name[self.names[row]]


def _times(
    values: pd.Series, zones: _Zones, column: str, dst: DstPolicy, errors: _Errors
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
    if naive.any():
        walls = pd.to_datetime(values[naive], format="ISO8601", errors="coerce").astype(
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
    known = zones.names.isin(list(zones.by_name)).to_numpy()
    bad = given & result.isna() & ~values.index.isin(reported) & known
    errors.add(
        values.index[bad.to_numpy()],
        column,
        (
            f"{v!r} is not an ISO 8601 time such as 2026-01-20 08:00 or 2026-01-20T08:00:00+01:00"
            for v in values[bad]
        ),
    )
    return result


def _json_cells(
    values: pd.Series, column: str, kind: type, example: str, errors: _Errors
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


def _priority(values: pd.Series, errors: _Errors) -> pd.Series:
    numbers = pd.to_numeric(values.where(values != ""), errors="coerce")
    given = values != ""
    bad = given & ~(numbers.notna() & (numbers % 1 == 0) & numbers.between(0, 255))
    errors.add(values.index[bad.to_numpy()], "priority", "must be a whole number from 0 to 255")
    result = pd.Series(None, index=values.index, dtype=object)
    ok = given & ~bad
    result[ok] = numbers[ok].astype(int).astype(object)
    return result


def _expires(values: pd.Series, errors: _Errors) -> pd.Series:
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


def _count(values: pd.Series, errors: _Errors) -> pd.Series:
    numbers = pd.to_numeric(values.where(values != ""), errors="coerce")
    bad = (values != "") & ~(numbers.notna() & (numbers % 1 == 0) & (numbers >= 1))
    errors.add(values.index[bad.to_numpy()], "count", "must be a whole number of runs, 1 or more")
    return numbers.where(~bad)


def _labels(
    cells: dict[str, pd.Series], label_columns: list[str], source: str, errors: _Errors
) -> tuple[pd.Series, pd.Series]:
    """Per-row label dicts (the source label included) and their canonical text."""
    texts = cells["labels"]
    index = texts.index
    if (texts == "").all() and not label_columns:
        # The common case: every row shares one dict, nothing to do per row.
        shared = {SOURCE_LABEL: source} if source else _EMPTY_DICT
        values = pd.Series([shared] * len(index), index=index, dtype=object)
        return values, pd.Series("", index=index, dtype=object)
    parsed, _ = _json_cells(texts, "labels", dict, 'a JSON object such as {"team": "ops"}', errors)
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


def _expand(
    rules: pd.DataFrame,
    cells: dict[str, pd.Series],
    zones: _Zones,
    until: pd.Series,
    count: pd.Series,
    *,
    now: pd.Timestamp,
    end: pd.Timestamp,
    dst: DstPolicy,
    errors: _Errors,
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
                    zones.of(row),
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
                    zones.of(row),
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


def _with_keys(runs: pd.DataFrame, source: str, recurring: np.ndarray[Any, Any]) -> pd.DataFrame:
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


def _apply_past(
    runs: pd.DataFrame,
    past: PastPolicy,
    now: pd.Timestamp,
    tolerance: timedelta,
    errors: _Errors,
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


def load_timetable(timetable: Source, *, format: str | None = None, **options: Any) -> Timetable:
    """Read and check a timetable file (or DataFrame); see :func:`check_timetable`."""
    frame, read_errors = read_frame(timetable, format=format)
    return check_timetable(frame, read_errors=read_errors, **options)


def read_timetable(
    timetable: Source,
    *,
    format: str | None = None,
    tz: str | tzinfo = "UTC",
    dst: DstPolicy = "raise",
    past: PastPolicy = "skip",
    horizon: timedelta = timedelta(days=7),
    source: str = "",
    now: datetime | None = None,
) -> pd.DataFrame:
    """The checked runs of a timetable (path, file object or DataFrame), one row per run.

    Raises InvalidArgument naming every bad cell as ``row N: column`` if any row is bad.
    """
    table = load_timetable(
        timetable,
        format=format,
        tz=tz,
        dst=dst,
        past=past,
        horizon=horizon,
        source=source,
        now=now,
    )
    if table.errors:
        shown = "; ".join(str(e) for e in table.errors[:5])
        more = f" (and {len(table.errors) - 5} more)" if len(table.errors) > 5 else ""
        raise InvalidArgument(
            f"{len(table.errors)} bad cell(s) in the timetable: {shown}{more}",
            violations=tuple(e.violation() for e in table.errors),
        )
    return table.runs
