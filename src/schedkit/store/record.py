"""The task record's Redis hash fields: short names, empty values left out.

Field names are one to three letters because every parked task pays for them (the store's
budget is 400 bytes a task). ``n`` task, ``a`` args JSON, ``k`` kwargs JSON, ``r`` run time ms,
``s`` state (absent while SCHEDULED), ``q`` queue, ``p`` priority, ``l`` labels JSON, ``x``
expires-after ms, ``i`` idempotency key, ``h`` content fingerprint, ``c`` created ms,
``qt``/``st``/``ft`` queued, started, finished ms, ``at`` attempts, ``res`` result, ``err``
error, ``tb`` traceback. :class:`Field` is where they are spelled; the scripts read them as
``field.<name in lower case>`` from the header ``schedkit.store.header`` renders.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, NamedTuple

import orjson

from schedkit.model import (
    TaskRecord,
    TaskSpec,
    TaskState,
    dumps,
    fingerprint_frame,
    fingerprint_of,
    from_millis,
)

__all__ = [
    "Field",
    "NewTasks",
    "Row",
    "Template",
    "decode",
    "dumps",
    "encode_template",
    "template_row",
]


_MILLISECOND = timedelta(milliseconds=1)


class Field:
    """The record's hash field names: plain str constants (the ingest path builds lists of
    them), each named for what it holds."""

    TASK: Final = "n"
    ARGS: Final = "a"
    KWARGS: Final = "k"
    RUN: Final = "r"
    STATE: Final = "s"
    QUEUE: Final = "q"
    PRIORITY: Final = "p"
    LABELS: Final = "l"
    EXPIRES: Final = "x"
    KEY: Final = "i"
    FINGERPRINT: Final = "h"
    CREATED: Final = "c"
    QUEUED: Final = "qt"
    STARTED: Final = "st"
    FINISHED: Final = "ft"
    ATTEMPTS: Final = "at"
    RESULT: Final = "res"
    ERROR: Final = "err"
    TRACEBACK: Final = "tb"

    @classmethod
    def names(cls) -> dict[str, str]:
        """Each field's stored name by its Python name, in declaration order."""
        return {name: value for name, value in vars(cls).items() if name.isupper()}


class Template(NamedTuple):
    """What rows sharing a spec store alike: the hash fields but run time, key and creation
    time, and the fingerprinted text around the run time."""

    fields: list[str]
    head: str
    tail: str


class Row(NamedTuple):
    """A new task as the store writes it: the fields of template ``template`` of its batch,
    plus its run time, creation time, and when keyed its key and fingerprint."""

    id: str
    key: str
    fingerprint: str  # '' when unkeyed
    run_ms: int
    template: int


@dataclass(frozen=True)
class NewTasks:
    """A batch of new tasks for the store: shared field lists, rows referring to them, and
    the creation time they all share. Rows carry no copy of their template's fields."""

    templates: list[list[str]]
    rows: list[Row]
    created_ms: int


def encode_template(
    spec: TaskSpec, args_json: str | None = None, kwargs_json: str | None = None
) -> Template:
    """The shared part of rows of ``spec`` (its run time and key are left out); pass the
    args/kwargs JSON when already made (made once)."""
    if args_json is None:
        args_json = dumps(spec.args) if spec.args else ""
    if kwargs_json is None:
        kwargs_json = dumps(spec.kwargs) if spec.kwargs else ""
    fields: list[str] = [Field.TASK, spec.task]
    if args_json:
        fields += [Field.ARGS, args_json]
    if kwargs_json:
        fields += [Field.KWARGS, kwargs_json]
    if spec.queue:
        fields += [Field.QUEUE, spec.queue]
    if spec.priority is not None:
        fields += [Field.PRIORITY, str(spec.priority)]
    labels_json = dumps(dict(spec.labels)) if spec.labels else ""
    if labels_json:
        fields += [Field.LABELS, labels_json]
    if spec.expires_after is not None:
        # Integer arithmetic: total_seconds() * 1000 is 28.999… for 29 ms.
        fields += [Field.EXPIRES, str(spec.expires_after // _MILLISECOND)]
    head, tail = fingerprint_frame(
        spec.task,
        args_json,
        kwargs_json,
        spec.queue,
        spec.priority,
        labels_json,
        spec.expires_after,
    )
    return Template(fields, head, tail)


def template_row(template: Template, task_id: str, key: str, run_ms: int, number: int) -> Row:
    """The store row of one run of ``template``, which is template ``number`` of its batch."""
    digest = fingerprint_of(template.head, run_ms, template.tail) if key else ""
    return Row(task_id, key, digest, run_ms, number)


def decode(task_id: str, raw: Mapping[str, str]) -> TaskRecord:
    """A TaskRecord from a hash as HGETALL returns it (decoded to str)."""
    spec = TaskSpec(
        task=raw[Field.TASK],
        run_at=from_millis(int(raw[Field.RUN])),
        args=_loads(raw[Field.ARGS]) if Field.ARGS in raw else [],
        kwargs=_loads(raw[Field.KWARGS]) if Field.KWARGS in raw else {},
        key=raw.get(Field.KEY, ""),
        queue=raw.get(Field.QUEUE, ""),
        priority=int(raw[Field.PRIORITY]) if Field.PRIORITY in raw else None,
        labels=_loads(raw[Field.LABELS]) if Field.LABELS in raw else {},
        expires_after=(
            timedelta(milliseconds=int(raw[Field.EXPIRES])) if Field.EXPIRES in raw else None
        ),
    )
    return TaskRecord(
        id=task_id,
        spec=spec,
        state=TaskState(raw.get(Field.STATE, TaskState.SCHEDULED)),
        created_at=from_millis(int(raw[Field.CREATED])),
        queued_at=_moment(raw, Field.QUEUED),
        started_at=_moment(raw, Field.STARTED),
        finished_at=_moment(raw, Field.FINISHED),
        attempts=int(raw.get(Field.ATTEMPTS, "0")),
        result=raw.get(Field.RESULT, ""),
        error=raw.get(Field.ERROR, ""),
        traceback=raw.get(Field.TRACEBACK, ""),
    )


def _loads(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)  # NaN or Infinity, which older records may hold


def _moment(raw: Mapping[str, str], name: str) -> Any:
    return from_millis(int(raw[name])) if name in raw else None
