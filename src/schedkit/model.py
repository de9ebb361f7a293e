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
        content = [
            self.task,
            self.args,
            self.kwargs,
            to_millis(self.run_at),
            self.queue,
            self.priority,
            sorted(self.labels.items()),
            None if self.expires_after is None else self.expires_after.total_seconds(),
        ]
        blob = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
        digest = hashlib.blake2b(blob.encode(), digest_size=6).digest()
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
    # 60 bits: ids are short because every parked task stores its id three times.
    return ("k" if key else "r") + base64.b32encode(digest).decode().lower()[:12]


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
