"""Reading a timetable file (CSV, Parquet, JSON lines, Excel) or DataFrame into raw cells.

Cells come back as read, indexed by row number; checking them is :mod:`schedkit.timetable.check`.
A line that cannot be a row at all (a CSV line with a cell too many, a JSON line that is no
object) is a :class:`RowError` in its place, never a lost file.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import sys
import warnings
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from schedkit.errors import ConfigError, InvalidArgument
from schedkit.timetable.schema import RowError

Source = str | Path | IO[str] | IO[bytes] | pd.DataFrame
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


def format_of(path: str | Path) -> str:
    """The reader a file name asks for: csv (also ``-``), parquet, jsonl or excel."""
    if str(path) == "-":
        return "csv"
    return FORMATS.get(Path(path).suffix.lower(), "csv")


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
