"""Checked timetable runs as ScheduleTasks requests in column form.

A timetable's runs mostly differ only in run time and key: thousands of rows share a task,
its arguments, queue and labels. Each batch therefore sends every distinct shared part once,
as a template, and per row only an index, a run time and a key. Neither side builds a message
or a Python object per row for what rows share.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd

from schedkit.errors import SchedkitError
from schedkit.model import EPOCH, TaskSpec
from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.wire.batches import Batch, checked_spec_to_proto

_NO_EXPIRY = np.iinfo(np.int64).min  # NaT as int64
# Templates are found by the identity of the checked frame's cell objects (one object per
# distinct cell); a bound keeps a frame of all-distinct cells from growing the cache unbounded.
_MAX_TEMPLATES = 10_000

_Shape = tuple[int, int, int, str, str, int | None, int]


def column_batches(runs: pd.DataFrame, start: int = 0, batch_size: int = 1000) -> Iterator[Batch]:
    """Requests for runs[start:] of a checked timetable, ``batch_size`` rows each, made lazily
    so only the batches in flight are held. A row whose shared part cannot be sent (say, NaN
    in its args) is a local error in its place, naming the field."""
    part = runs.iloc[start:]
    micros = part["run_at"].dt.as_unit("us").astype("int64").to_numpy()
    expires = part["expires_after"].to_numpy().astype("timedelta64[us]").astype("int64")
    shapes = list(
        zip(
            map(id, part["args"].tolist()),
            map(id, part["kwargs"].tolist()),
            map(id, part["labels"].tolist()),
            part["task"].tolist(),
            part["queue"].tolist(),
            [_priority(p) for p in part["priority"].tolist()],
            expires.tolist(),
            strict=True,
        )
    )
    cells = _Cells(part)
    keys = part["key"].tolist()
    templates: dict[_Shape, pb.TaskSpec | SchedkitError] = {}
    for low in range(0, len(part), batch_size):
        high = min(low + batch_size, len(part))
        request = pb.ScheduleTasksRequest()
        columns = request.columns
        numbers: dict[_Shape, int] = {}
        chosen: list[pb.TaskSpec] = []
        local_errors: list[SchedkitError | None] = [None] * (high - low)
        index: list[int] = []
        for row in range(low, high):
            shape = shapes[row]
            number = numbers.get(shape)
            if number is None:
                template = templates.get(shape)
                if template is None:
                    if len(templates) >= _MAX_TEMPLATES:
                        templates.clear()
                    template = templates[shape] = cells.template(row, shape)
                if isinstance(template, SchedkitError):
                    local_errors[row - low] = template
                    continue
                number = numbers[shape] = len(chosen)
                chosen.append(template)
            index.append(number)
        columns.templates.extend(chosen)  # one copy into the message, in C
        columns.template_index.extend(index)
        if len(index) == high - low:
            columns.run_time_micros.extend(micros[low:high].tolist())
            batch_keys = keys[low:high]
        else:
            sent = [row for row in range(low, high) if local_errors[row - low] is None]
            columns.run_time_micros.extend(micros[sent].tolist())
            batch_keys = [keys[row] for row in sent]
        if any(batch_keys):
            columns.idempotency_keys.extend(batch_keys)
        yield Batch(request, local_errors)


class _Cells:
    """The shared cells of a frame's rows, made into template messages on demand."""

    def __init__(self, part: pd.DataFrame) -> None:
        self.args = part["args"].tolist()
        self.kwargs = part["kwargs"].tolist()
        self.labels = part["labels"].tolist()

    def template(self, row: int, shape: _Shape) -> pb.TaskSpec | SchedkitError:
        """The template of ``row``, or the error naming the cell that cannot be sent."""
        task, queue, priority, expires = shape[3], shape[4], shape[5], shape[6]
        spec = TaskSpec(
            task,
            EPOCH,
            args=self.args[row],
            kwargs=self.kwargs[row],
            queue=queue,
            priority=priority,
            labels=self.labels[row],
            expires_after=None if expires == _NO_EXPIRY else timedelta(microseconds=expires),
        )
        try:
            message = checked_spec_to_proto(spec)
        except SchedkitError as exc:
            return exc
        message.ClearField("run_time")  # each row's own, in run_time_micros
        return message


def _priority(value: Any) -> int | None:
    if value is None or value != value:  # NaN is a missing number
        return None
    return int(value)
