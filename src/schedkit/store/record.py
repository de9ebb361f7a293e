"""The task record's Redis hash fields: short names, empty values left out.

Field names are one to three letters because every parked task pays for them (the store's
budget is 400 bytes a task). ``n`` task, ``a`` args JSON, ``k`` kwargs JSON, ``r`` run time ms,
``s`` state (absent while SCHEDULED), ``q`` queue, ``p`` priority, ``l`` labels JSON, ``x``
expires-after ms, ``i`` idempotency key, ``h`` content fingerprint, ``c`` created ms,
``qt``/``st``/``ft`` queued, started, finished ms, ``at`` attempts, ``res`` result, ``err``
error, ``tb`` traceback.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NamedTuple

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

__all__ = ["NewTasks", "Row", "Template", "decode", "dumps", "encode_template", "template_row"]


_MILLISECOND = timedelta(milliseconds=1)


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
    fields: list[str] = ["n", spec.task]
    if args_json:
        fields += ["a", args_json]
    if kwargs_json:
        fields += ["k", kwargs_json]
    if spec.queue:
        fields += ["q", spec.queue]
    if spec.priority is not None:
        fields += ["p", str(spec.priority)]
    labels_json = dumps(dict(spec.labels)) if spec.labels else ""
    if labels_json:
        fields += ["l", labels_json]
    if spec.expires_after is not None:
        # Integer arithmetic: total_seconds() * 1000 is 28.999… for 29 ms.
        fields += ["x", str(spec.expires_after // _MILLISECOND)]
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
        task=raw["n"],
        run_at=from_millis(int(raw["r"])),
        args=_loads(raw["a"]) if "a" in raw else [],
        kwargs=_loads(raw["k"]) if "k" in raw else {},
        key=raw.get("i", ""),
        queue=raw.get("q", ""),
        priority=int(raw["p"]) if "p" in raw else None,
        labels=_loads(raw["l"]) if "l" in raw else {},
        expires_after=timedelta(milliseconds=int(raw["x"])) if "x" in raw else None,
    )
    return TaskRecord(
        id=task_id,
        spec=spec,
        state=TaskState(raw.get("s", "SCHEDULED")),
        created_at=from_millis(int(raw["c"])),
        queued_at=_moment(raw, "qt"),
        started_at=_moment(raw, "st"),
        finished_at=_moment(raw, "ft"),
        attempts=int(raw.get("at", "0")),
        result=raw.get("res", ""),
        error=raw.get("err", ""),
        traceback=raw.get("tb", ""),
    )


def _loads(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)  # NaN or Infinity, which older records may hold


def _moment(raw: Mapping[str, str], name: str) -> Any:
    return from_millis(int(raw[name])) if name in raw else None
