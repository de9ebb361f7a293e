"""Every spec the checks accept reads back: through the store (a real Redis) and record.py,
and through convert.py to protobuf and back, equal to what was sent at the store's precision.
"""

from __future__ import annotations

import inspect
import itertools
import os
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from schedkit.demo import app as demo_app
from schedkit.dispatch.registry import TaskRegistry
from schedkit.errors import InvalidArgument
from schedkit.model import (
    EPOCH,
    MAX_MICROS,
    MAX_RUN_MICROS,
    Outcome,
    TaskSpec,
    dumps,
    from_micros,
    from_millis,
    to_micros,
    to_millis,
)
from schedkit.service.schedules import (
    MAX_KEY,
    MAX_LABEL_KEY,
    MAX_LABEL_VALUE,
    Schedules,
    created_record,
)
from schedkit.settings import Settings
from schedkit.store.store import Store
from schedkit.testing import redis_server
from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.wire.convert import (
    MAX_NESTING,
    rows_from_columns,
    spec_from_proto,
    spec_to_proto,
    task_from_proto,
    task_to_proto,
)

ROUND_TRIP = settings(
    max_examples=int(os.environ.get("ROUND_TRIP_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
TASKS = ("water_plants", "add", "fail", "nap", "flaky")
# The largest integer a Struct's double carries exactly.
MAX_INT = 2**53 - 1
LATEST = from_micros(MAX_RUN_MICROS)

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-MAX_INT, MAX_INT)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)


def containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4)


@st.composite
def chain(draw: st.DrawFn, depth: int) -> Any:
    """A value exactly ``depth`` lists or objects deep, each level a list or an object."""
    value: Any = draw(scalars)
    for _ in range(depth):
        value = [value] if draw(st.booleans()) else {draw(text): value}
    return value


# Under args or kwargs (level 1), a value may be MAX_NESTING - 1 containers deep; deeper ones
# check that what is refused is refused.
json_values = st.recursive(scalars, containers, max_leaves=10) | st.integers(
    1, MAX_NESTING + 1
).flatmap(lambda depth: chain(depth))


@st.composite
def calls(draw: st.DrawFn) -> tuple[str, list[Any], dict[str, Any]]:
    """A task of the demo app and arguments that bind to its signature."""
    task = draw(st.sampled_from(TASKS))
    signature = inspect.signature(demo_app.tasks[task].run)  # as the registry binds it
    parameters = list(signature.parameters)
    required = [
        name for name, p in signature.parameters.items() if p.default is inspect.Parameter.empty
    ]
    positional = draw(st.integers(0, len(parameters)))
    args = [draw(json_values) for _ in range(positional)]
    rest = parameters[positional:]
    chosen = [name for name in rest if name in required or draw(st.booleans())]
    kwargs = {name: draw(json_values) for name in chosen}
    return task, args, kwargs


# Up to the last microsecond of 9999, past LATEST too: those must be refused.
edges = [LATEST - timedelta(microseconds=1), LATEST, LATEST + timedelta(microseconds=1)]
run_times = st.sampled_from(edges) | st.datetimes(
    min_value=datetime(2100, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999)
).map(lambda naive: naive.replace(tzinfo=UTC))
expiries = (
    st.none()
    | st.integers(1, 10**12).map(lambda ms: timedelta(milliseconds=ms))  # whole ms, as stored
    | st.integers(1, 999).map(lambda us: timedelta(microseconds=us))  # less than the store keeps
    | st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=3_652_425))
)
labels = st.dictionaries(
    st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=MAX_LABEL_KEY),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=MAX_LABEL_VALUE),
    max_size=4,
)
_unique = itertools.count()
# Queues are an allow-list: the module's registry allows these, odd ones included (no comma:
# the setting is comma separated).
QUEUES = ("celery", "reports", "ünïcödé", "with space", "x" * 200, "schedkit-like:name")


@st.composite
def task_specs(draw: st.DrawFn) -> TaskSpec:
    """Any spec the server's checks accept."""
    task, args, kwargs = draw(calls())
    key = draw(st.just("") | st.text(st.characters(exclude_categories=("Cs",)), max_size=40))
    if key:  # each example its own task: the same key with other content is refused
        key = f"{key}#{next(_unique)}"[-MAX_KEY:]
    return TaskSpec(
        task=task,
        run_at=draw(run_times),
        args=args,
        kwargs=kwargs,
        key=key,
        queue=draw(st.just("") | st.sampled_from(QUEUES)),
        priority=draw(st.none() | st.integers(0, 255)),
        labels=draw(labels),
        expires_after=draw(expiries),
    )


def depth(value: Any) -> int:
    """How many lists or objects deep ``value`` is."""
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


def refusal(spec: TaskSpec) -> str | None:
    """Which field the checks must refuse, if any, of a spec drawn past the limits."""
    if spec.expires_after is not None and spec.expires_after < _MS:
        return "expires_after"  # the store keeps whole ms: it would read back as none
    if depth(spec.args) > MAX_NESTING:
        return "args"
    if depth(spec.kwargs) > MAX_NESTING:
        return "kwargs"
    if spec.run_at > LATEST:
        return "run_time"  # it would be stored in the year 10000
    return None


def json_form(value: Any) -> Any:
    """What a value is once carried by a Struct: integral numbers are ints."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, list):
        return [json_form(v) for v in value]
    if isinstance(value, dict):
        return {k: json_form(v) for k, v in value.items()}
    return value


def sent(spec: TaskSpec) -> TaskSpec:
    """``spec`` as the server receives it: arguments in their Struct form."""
    return replace(spec, args=json_form(spec.args), kwargs=json_form(spec.kwargs))


def at_store_precision(spec: TaskSpec) -> TaskSpec:
    """``spec`` as the store keeps it: run time rounded to ms, expiry cut to whole ms."""
    expiry = spec.expires_after
    return replace(
        sent(spec),
        run_at=from_millis(to_millis(spec.run_at)),
        expires_after=None if expiry is None else timedelta(milliseconds=expiry // _MS),
    )


_MS = timedelta(milliseconds=1)


def same(left: TaskSpec, right: TaskSpec) -> None:
    """Equal, with bools told from ints and ints from floats (== alone would not)."""
    assert left == right
    assert dumps([left.args, left.kwargs]) == dumps([right.args, right.kwargs])


@pytest.fixture(scope="module")
def schedules() -> Iterator[Schedules]:
    with redis_server(appendonly=False) as redis:
        store = Store.from_url(redis.url)
        yield Schedules(
            store,
            TaskRegistry(demo_app, allow_queues=",".join(QUEUES)),
            Settings(store_url=redis.url),
        )
        store.close()


# 1001 ms is 1000.9999… ms in float seconds: once stored as 1000.
FLOAT_TRAP = TaskSpec("add", LATEST, [1, 2], expires_after=timedelta(milliseconds=1001))


@ROUND_TRIP
@given(spec=task_specs())
@example(spec=FLOAT_TRAP)
def test_every_accepted_spec_reads_back_from_the_store(
    schedules: Schedules, spec: TaskSpec
) -> None:
    message = pb.TaskSpec.FromString(spec_to_proto(spec).SerializeToString())
    refused = refusal(spec)
    if refused is not None:
        with pytest.raises(InvalidArgument) as caught:
            spec_from_proto(message)
        assert f"spec.{refused}" in {v.field for v in caught.value.violations}
        return
    received = spec_from_proto(message)
    same(received, sent(spec))
    # ScheduleTask's own steps: prepare, store, and answer the record without reading it.
    now = schedules.clock()
    result = schedules.store_prepared(schedules.prepare_one(received, now))[0]
    assert result.outcome is Outcome.CREATED, result.error
    record = created_record(received, result.id, now)
    stored = schedules.store.get(record.id)
    expected = at_store_precision(spec)
    same(stored.spec, expected)
    assert stored == record  # what ScheduleTask answers is what GetTask will
    # And to a client: the Task message, its bytes, and back.
    message = pb.Task.FromString(task_to_proto(stored).SerializeToString())
    assert task_from_proto(message) == stored
    same(task_from_proto(message).spec, expected)


@ROUND_TRIP
@given(spec=task_specs(), micros_offset=st.integers(0, 999))
def test_every_accepted_column_row_reads_back_from_the_store(
    schedules: Schedules, spec: TaskSpec, micros_offset: int
) -> None:
    micros = min(to_micros(spec.run_at) + micros_offset, MAX_MICROS)
    spec = replace(spec, run_at=from_micros(micros))
    template = spec_to_proto(replace(spec, run_at=EPOCH, key=""))
    template.ClearField("run_time")
    columns = pb.TaskColumns(
        templates=[template],
        template_index=[0],
        run_time_micros=[micros],
        idempotency_keys=[spec.key],
    )
    rows = rows_from_columns(pb.TaskColumns.FromString(columns.SerializeToString()))
    (result,) = schedules.store_prepared(schedules.prepare_rows(rows))  # as ScheduleTasks does
    refused = refusal(spec)
    if refused is not None:
        assert isinstance(result.error, InvalidArgument)
        fields = {v.field.split(".")[-1].split("[")[0] for v in result.error.violations}
        assert ("run_time_micros" if refused == "run_time" else refused) in fields
        return
    assert result.outcome is Outcome.CREATED, result.error
    expected = at_store_precision(spec)
    same(schedules.store.get(result.id).spec, expected)


def test_the_latest_run_time_is_the_last_millisecond_of_9999() -> None:
    assert from_millis(to_millis(LATEST)) == datetime(9999, 12, 31, 23, 59, 59, 999000, UTC)
    assert to_millis(LATEST + timedelta(microseconds=1)) > to_millis(LATEST)


def test_a_task_nested_past_the_limit_by_an_older_server_still_reads_on_a_client() -> None:
    deep: Any = "é"
    for level in range(MAX_NESTING + 5):
        deep = [deep] if level % 2 else {"n": deep}
    spec = TaskSpec("nap", LATEST, kwargs={"seconds": deep})
    message = pb.Task(id="rolder", spec=spec_to_proto(spec), state=pb.TASK_STATE_SCHEDULED)
    assert task_from_proto(message).spec.kwargs == json_form(spec.kwargs)
