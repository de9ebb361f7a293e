"""Structured logs: ``key=value`` text or one JSON object per line, with task ids as fields.

Code logs with ``extra={"task_id": ...}`` (or any other field); both formats print every
extra field, so a log search for a task id finds each line about that task.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

LOG_FORMATS = ("text", "json")
# Attributes every LogRecord has; anything else on a record came in through ``extra``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a call added with ``extra=``."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


def _quote(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return json.dumps(text)
    return text


class KeyValueFormatter(logging.Formatter):
    """``2026-01-01T08:00:00.000+00:00 INFO schedkit.dispatch.dispatcher: handed task_id=…``."""

    def format(self, record: logging.LogRecord) -> str:
        """One line (plus a traceback if any)."""
        fields = " ".join(f"{k}={_quote(v)}" for k, v in extras(record).items())
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        if fields:
            line = f"{line} {fields}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


class JsonFormatter(logging.Formatter):
    """``{"ts": …, "level": …, "logger": …, "message": …, "task_id": …}`` per line."""

    def format(self, record: logging.LogRecord) -> str:
        """One JSON object; the traceback, if any, in ``exc``."""
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **extras(record),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(log_format: str = "text", *, level: int = logging.INFO) -> None:
    """Send the root logger to stderr in ``log_format`` (text or json)."""
    if log_format not in LOG_FORMATS:
        from schedkit.errors import ConfigError

        raise ConfigError(f"log format {log_format!r}: use one of {', '.join(LOG_FORMATS)}")
    formatter = JsonFormatter() if log_format == "json" else KeyValueFormatter()
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
