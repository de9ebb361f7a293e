"""Domain types: what a task is, independent of gRPC and Redis."""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson


class TaskState(enum.StrEnum):
    """Where a task is in its life; the values are the proto enum names without prefix."""

    SCHEDULED = "SCHEDULED"
    QUEUED = "QUEUED"
    STARTED = "STARTED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    RETRYING = "RETRYING"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"

    @property
    def is_final(self) -> bool:
        """True once nothing more will happen to the task."""
        return self in FINAL_STATES


FINAL_STATES = frozenset(
    {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.EXPIRED}
)


class Outcome(enum.StrEnum):
    """What scheduling one task did."""

    CREATED = "CREATED"
    EXISTING = "EXISTING"
    REJECTED = "REJECTED"


@dataclass(frozen=True)
class TaskSpec:
    """One run of a Celery task: what, with which arguments, and when (tz-aware UTC)."""

    task: str
    run_at: datetime
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    key: str = ""
    queue: str = ""
    priority: int | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    expires_after: timedelta | None = None

    def fingerprint(self) -> str:
        """A short hash of everything that defines the task, to tell a re-send from a conflict."""
        return fingerprint(
            self.task,
            dumps(self.args) if self.args else "",
            dumps(self.kwargs) if self.kwargs else "",
            to_millis(self.run_at),
            self.queue,
            self.priority,
            dumps(dict(sorted(self.labels.items()))) if self.labels else "",
            self.expires_after,
        )


# Keys are sorted so that equal content has one text, which the fingerprint relies on.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def dumps(value: Any) -> str:
    """Compact JSON with sorted keys: as stored, fingerprinted and sent to Celery."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        # What orjson refuses but json takes (non-str keys, ints beyond 64 bits), or the
        # TypeError json raises for what is not JSON at all.
        return _ENCODER.encode(value)


def fingerprint(
    task: str,
    args_json: str,
    kwargs_json: str,
    run_ms: int,
    queue: str,
    priority: int | None,
    labels_json: str,
    expires_after: timedelta | None,
) -> str:
    """The content hash of a task from its stored texts (JSON made once, hashed as is)."""
    expires = "" if expires_after is None else str(expires_after.total_seconds())
    content = "\x1f".join(
        (task, args_json, kwargs_json, str(run_ms), queue, str(priority), labels_json, expires)
    )
    digest = hashlib.blake2b(content.encode(), digest_size=6).digest()
    return base64.b64encode(digest).decode()


@dataclass(frozen=True)
class TaskRecord:
    """A task as the store knows it."""

    id: str
    spec: TaskSpec
    state: TaskState
    created_at: datetime
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    result: str = ""
    error: str = ""
    traceback: str = ""


@dataclass(frozen=True)
class ScheduleResult:
    """The outcome of scheduling one spec of a batch; ``error`` is set when rejected."""

    id: str
    outcome: Outcome
    error: Exception | None = None


def task_id_for(key: str) -> str:
    """The task id for an idempotency key (``k`` + hash), or a fresh random one (``r`` + ...).

    Deriving the id from the key makes the task record its own idempotency index.
    """
    if key:
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    else:
        digest = secrets.token_bytes(8)
    # 60 bits: ids are short because every parked task stores its id three times. The text
    # is the first 12 characters of the digest's lower-case base32, two characters per
    # table look-up (base64.b32encode is slow on the ingest path).
    bits = int.from_bytes(digest) >> 4
    pairs = _B32_PAIRS
    return ("k" if key else "r") + (
        pairs[bits >> 50]
        + pairs[(bits >> 40) & 1023]
        + pairs[(bits >> 30) & 1023]
        + pairs[(bits >> 20) & 1023]
        + pairs[(bits >> 10) & 1023]
        + pairs[bits & 1023]
    )


_B32 = "abcdefghijklmnopqrstuvwxyz234567"
_B32_PAIRS = [a + b for a in _B32 for b in _B32]


def to_millis(moment: datetime) -> int:
    """Milliseconds since the epoch of a tz-aware datetime."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: schedkit needs an instant (tz-aware datetime)")
    return round(moment.timestamp() * 1000)


def from_millis(millis: int) -> datetime:
    """The tz-aware UTC datetime of milliseconds since the epoch."""
    return datetime.fromtimestamp(millis / 1000, tz=UTC)


def utc_now() -> datetime:
    """Now, tz-aware UTC."""
    return datetime.now(tz=UTC)
