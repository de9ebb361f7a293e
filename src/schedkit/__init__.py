"""schedkit: run Celery tasks at a given time, durably, from a timetable, a notebook or gRPC.

The public names are listed in ``__all__``; a test pins the list. ``read_timetable`` is
imported on first use: it needs pandas, which workers and servers should not load.
"""

from typing import TYPE_CHECKING, Any

from schedkit.client import Client, Scheduled
from schedkit.errors import (
    AlreadyExists,
    ConfigError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    SchedkitError,
    Unauthenticated,
    Unavailable,
)
from schedkit.hook import install
from schedkit.model import Outcome, ScheduleResult, TaskRecord, TaskSpec, TaskState
from schedkit.registry import TaskType
from schedkit.settings import Settings
from schedkit.stack import Stack

if TYPE_CHECKING:
    from schedkit.timetable import read_timetable

__all__ = [
    "AlreadyExists",
    "Client",
    "ConfigError",
    "FailedPrecondition",
    "FieldViolation",
    "InvalidArgument",
    "NotFound",
    "Outcome",
    "ResourceExhausted",
    "SchedkitError",
    "ScheduleResult",
    "Scheduled",
    "Settings",
    "Stack",
    "TaskRecord",
    "TaskSpec",
    "TaskState",
    "TaskType",
    "Unauthenticated",
    "Unavailable",
    "install",
    "read_timetable",
]


def __getattr__(name: str) -> Any:
    if name == "read_timetable":
        from schedkit.timetable import read_timetable

        return read_timetable
    raise AttributeError(f"module 'schedkit' has no attribute {name!r}")
