"""What crosses to and from Redis besides the record itself: the schedule script's payload
and verdicts, event stream entries, and ListTasks page tokens (checked in full, since a
caller may forge one)."""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from schedkit.errors import AlreadyExists, InvalidArgument, excerpt
from schedkit.model import (
    MAX_MICROS,
    MIN_MICROS,
    Outcome,
    ScheduleResult,
    TaskState,
    from_millis,
)
from schedkit.store.keys import EventField
from schedkit.store.record import NewTasks, Row


@dataclass(frozen=True)
class StateChange:
    """One entry of the event stream."""

    cursor: str
    task_id: str
    state: TaskState
    at: datetime


def changes_of(reply: Any) -> list[StateChange]:
    """The state changes of an XREAD reply on the event stream, in order."""
    changes = []
    for _, entries in reply or []:
        for cursor, fields in entries:
            at = from_millis(int(str(cursor).split("-", 1)[0]))
            state = TaskState(fields[EventField.STATE])
            # One entry may carry many tasks' same change (see emit_many in prelude.lua).
            for task_id in fields[EventField.IDS].split(" "):
                changes.append(StateChange(str(cursor), task_id, state, at))
    return changes


def schedule_payload(batch: NewTasks) -> bytes:
    """The schedule script's batch argument: [templates, rows, created ms] as JSON."""
    return orjson.dumps(
        [
            batch.templates,
            [(r.id, r.fingerprint, str(r.run_ms), r.template, r.key) for r in batch.rows],
            str(batch.created_ms),
        ]
    )


def schedule_results(rows: Sequence[Row], verdicts: Sequence[int]) -> list[ScheduleResult]:
    """Each row's result from the schedule script's verdicts, in row order."""
    results = []
    for row, verdict in zip(rows, verdicts, strict=True):
        if verdict == 1:
            results.append(ScheduleResult(row.id, Outcome.CREATED))
        elif verdict == 2:
            results.append(ScheduleResult(row.id, Outcome.EXISTING))
        else:
            error = AlreadyExists(
                f"idempotency key {excerpt(row.key)!r} already names task {row.id} with "
                "different content; use a new key to schedule something else"
            )
            results.append(ScheduleResult(row.id, Outcome.REJECTED, error))
    return results


def pairs(flat: Sequence[str]) -> Iterator[tuple[str, str]]:
    """(field, value) pairs of a flat Redis reply."""
    return zip(flat[::2], flat[1::2], strict=True)


def make_page_token(score: float, task_id: str) -> str:
    """The page token that resumes after (run time ms, task id)."""
    return base64.urlsafe_b64encode(f"{int(score)}:{task_id}".encode()).decode()


# A page token is base64 of "<run time ms>:<task id>", as make_page_token writes it. The run time
# is the score of a task in a state index, so in the store's range; ids are short and plain.
_TOKEN = re.compile(r"(-?[0-9]{1,16}):([A-Za-z0-9_-]{1,64})")
_MAX_TOKEN_CHARS = 128
_MIN_SCORE = MIN_MICROS // 1000
_MAX_SCORE = MAX_MICROS // 1000 + 1


def parse_page_token(token: str) -> tuple[str, str]:
    """(run time ms, task id) of a page token, or InvalidArgument naming ``page_token``."""
    # Checked whole here: whatever reaches page.lua must be a number Redis reads as a score.
    if not token:
        return "", ""
    match = None
    if len(token) <= _MAX_TOKEN_CHARS:
        with contextlib.suppress(ValueError, binascii.Error, UnicodeDecodeError):
            match = _TOKEN.fullmatch(base64.urlsafe_b64decode(token.encode("ascii")).decode())
    if match is None or not _MIN_SCORE <= int(match[1]) <= _MAX_SCORE:
        raise InvalidArgument.for_field(
            "page_token", "not a token this server issued; pass next_page_token unchanged"
        )
    return str(int(match[1])), match[2]
