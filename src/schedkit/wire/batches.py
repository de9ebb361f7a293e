"""A ScheduleTasks request with the items kept out of it, and the client-side check of a spec.

Both the client (specs) and the timetable (columns) build batches; the type lives on the wire
so the timetable never imports the client.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from schedkit.errors import InvalidArgument, SchedkitError
from schedkit.model import TaskSpec
from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.wire.convert import spec_to_proto


@dataclass(frozen=True)
class Batch:
    """One ScheduleTasks request, and per item in the caller's order the local error that kept
    it out of the request (None for each item the request carries, in the same order)."""

    request: pb.ScheduleTasksRequest
    local_errors: list[SchedkitError | None]

    @property
    def sent(self) -> bool:
        """Whether the request carries anything (an empty batch is not sent)."""
        return None in self.local_errors


def checked_spec_to_proto(spec: TaskSpec, prefix: str = "") -> pb.TaskSpec:
    """spec_to_proto, with client-side mistakes raised as InvalidArgument naming the field."""
    if spec.run_at.tzinfo is None or spec.run_at.utcoffset() is None:
        raise InvalidArgument.for_field(
            f"{prefix}run_at", "naive datetime: give a time zone (see schedkit.timeutil)"
        )
    if not isinstance(spec.args, list | tuple):
        raise InvalidArgument.for_field(
            f"{prefix}args", f"must be a list, got {type(spec.args).__name__}"
        )
    if not isinstance(spec.kwargs, Mapping):
        raise InvalidArgument.for_field(
            f"{prefix}kwargs", f"must be an object (dict), got {type(spec.kwargs).__name__}"
        )
    try:
        return spec_to_proto(spec)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument.for_field(
            f"{prefix}args", f"args and kwargs must be JSON values: {exc}"
        ) from exc
