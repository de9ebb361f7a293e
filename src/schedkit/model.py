"""Domain types: what a task is, independent of gRPC and Redis."""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import secrets
from collections.abc import Callable, Mapping, Sequence
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


FINAL_STATES = frozenset(
    {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.EXPIRED}
)
#: States of a task that has not started yet: it may still start, or be cancelled.
WAITING_STATES = frozenset({TaskState.SCHEDULED, TaskState.QUEUED, TaskState.RETRYING})

#: Start lateness histogram: upper bucket bounds in ms. The store's start script counts
#: into them and the metrics endpoint reads them back; both take them from here.
LATENESS_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000)


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


@dataclass(frozen=True)
class TaskRows:
    """A batch in column form: row ``i`` is ``templates[template[i]]`` run at ``run_micros[i]``
    (microseconds since the epoch) under idempotency key ``keys[i]``.

    Rows of a timetable share all but their time and key, so what they share is checked and
    encoded once per template. A template's own ``run_at`` and ``key`` are not used; an
    Exception template is a rejection for every row that refers to it.
    """

    templates: Sequence[TaskSpec | Exception]
    template: Sequence[int]
    run_micros: Sequence[int]
    keys: Sequence[str]
    # True when equal templates arrive as the same object batch after batch (a converter
    # keeps them): their checks are then kept by identity too.
    reused: bool = False
    # Called with a template's number once every check of it passed: a converter keeps only
    # such templates, so what callers send and the server refuses is never held.
    keep: Callable[[int], None] | None = None

    def __len__(self) -> int:
        return len(self.template)

    @classmethod
    def of_specs(cls, specs: Sequence[TaskSpec | Exception]) -> TaskRows:
        """Each spec its own template: the row form of a list of specs."""
        return cls(
            templates=specs,
            template=range(len(specs)),
            run_micros=[to_micros(s.run_at) if isinstance(s, TaskSpec) else 0 for s in specs],
            keys=[s.key if isinstance(s, TaskSpec) else "" for s in specs],
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


def fingerprint_frame(
    task: str,
    args_json: str,
    kwargs_json: str,
    queue: str,
    priority: int | None,
    labels_json: str,
    expires_after: timedelta | None,
) -> tuple[str, str]:
    """The fingerprinted text around the run time: made once for rows that share the rest."""
    expires = "" if expires_after is None else str(expires_after.total_seconds())
    head = "\x1f".join((task, args_json, kwargs_json, ""))
    tail = "\x1f".join(("", queue, str(priority), labels_json, expires))
    return head, tail


def fingerprint_of(head: str, run_ms: int, tail: str) -> str:
    """The fingerprint of one run of a frame from :func:`fingerprint_frame`."""
    digest = hashlib.blake2b(f"{head}{run_ms}{tail}".encode(), digest_size=6).digest()
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


# Run times: the range a protobuf Timestamp (and a datetime) holds, years 1 to 9999, in
# seconds and in microseconds since the epoch.
MIN_SECONDS = -62135596800
MAX_SECONDS = 253402300799
MIN_MICROS = MIN_SECONDS * 1_000_000
MAX_MICROS = MAX_SECONDS * 1_000_000 + 999_999
# The store keeps milliseconds, rounding halves up: the latest run time that still rounds to
# a millisecond of the year 9999 (9999-12-31T23:59:59.999499Z), so every stored time reads
# back as a datetime (and a Timestamp).
MAX_RUN_MICROS = MAX_SECONDS * 1_000_000 + 999_499
LATEST_RUN_TIME = "9999-12-31T23:59:59.999Z"
RUN_TIME_TOO_LATE = f"after {LATEST_RUN_TIME}, the latest time the store (in milliseconds) holds"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_micros(moment: datetime) -> int:
    """Microseconds since the epoch of a tz-aware datetime, exactly."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: schedkit needs an instant (tz-aware datetime)")
    return (moment - EPOCH) // _MICROSECOND


def millis_of_micros(micros: int) -> int:
    """Milliseconds from microseconds, halves rounded up: the store's precision."""
    return (micros + 500) // 1000


def to_millis(moment: datetime) -> int:
    """Milliseconds since the epoch of a tz-aware datetime (integer arithmetic, so a time
    given as a datetime and the same time given as microseconds store the same)."""
    return millis_of_micros(to_micros(moment))


def from_micros(micros: int) -> datetime:
    """The tz-aware UTC datetime of microseconds since the epoch."""
    return EPOCH + timedelta(microseconds=micros)


def from_millis(millis: int) -> datetime:
    """The tz-aware UTC datetime of milliseconds since the epoch."""
    return EPOCH + timedelta(milliseconds=millis)


def utc_now() -> datetime:
    """Now, tz-aware UTC."""
    return datetime.now(tz=UTC)


@dataclass(frozen=True)
class TaskType:
    """A schedulable task: its name, Python signature and first docstring line."""

    name: str
    signature: str
    doc: str
