"""schedkit: run Celery tasks at a given time, durably, from a timetable, a notebook or gRPC.

The public names are listed in ``__all__``; a test pins the list. ``import schedkit`` loads
the client and the vocabulary only: ``Stack`` and ``install`` (Celery, Redis, the server) and
``read_timetable`` (pandas) are imported on first use, so a client or a notebook that only
schedules never loads them.
"""

import importlib
from typing import TYPE_CHECKING, Any

from schedkit.client.client import Client, Scheduled
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
from schedkit.model import Outcome, ScheduleResult, TaskRecord, TaskSpec, TaskState, TaskType
from schedkit.settings import Settings

if TYPE_CHECKING:
    from schedkit.dispatch.hook import install
    from schedkit.runtime.stack import Stack
    from schedkit.timetable.check import read_timetable

# Heavy names, by the module that defines them: imported when first read.
_ON_FIRST_USE = {
    "Stack": "schedkit.runtime.stack",
    "install": "schedkit.dispatch.hook",
    "read_timetable": "schedkit.timetable.check",
}

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
    """Import ``Stack``, ``install`` and ``read_timetable`` when first read."""
    module = _ON_FIRST_USE.get(name)
    if module is None:
        raise AttributeError(f"module 'schedkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
