"""Abusive input over a real server: refused with INVALID_ARGUMENT naming the field, never
stored half-readable, never answered INTERNAL, and never echoed back at length."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from conftest import violations
from schedkit.client.client import Client
from schedkit.demo import app as demo_app
from schedkit.dispatch.registry import TaskRegistry
from schedkit.model import MAX_SECONDS, task_id_for
from schedkit.service.schedules import Schedules
from schedkit.service.server import Server
from schedkit.settings import Settings
from schedkit.store.store import Store
from schedkit.testing import redis_server
from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.v1 import schedule_service_pb2_grpc as pb_grpc
from schedkit.wire.convert import MAX_NESTING

MB = 1024 * 1024
# An error message repeats at most a short excerpt of what was sent.
SHORT = 1024
# 9999-12-31T23:59:59.999499Z rounds to the last millisecond of the year 9999, and
# 9999-12-31T23:59:59.9996Z rounds into the year 10000.
LATEST_MICROS = MAX_SECONDS * 1_000_000 + 999_499
EDGE_MICROS = MAX_SECONDS * 1_000_000 + 999_600


@dataclass
class Served:
    stub: pb_grpc.ScheduleServiceStub
    store: Store
    address: str


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with redis_server(appendonly=False) as redis:
        store = Store.from_url(redis.url)
        settings = Settings(store_url=redis.url, max_batch=100)  # type: ignore[arg-type]
        server = Server(Schedules(store, TaskRegistry(demo_app), settings), listen="127.0.0.1:0")
        server.start()
        try:
            with grpc.insecure_channel(server.address) as channel:
                yield Served(pb_grpc.ScheduleServiceStub(channel), store, server.address)
        finally:
            server.stop(0)
            store.close()


def refusal(call: Any, request: Any) -> tuple[grpc.StatusCode, str, list[str]]:
    """The status, message and violated fields of a call that must fail."""
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30)
    error: Any = caught.value
    return error.code(), error.details(), list(violations(error))


def stream(stub: pb_grpc.ScheduleServiceStub) -> Any:
    def call(request: pb.ScheduleTasksRequest, timeout: float) -> list[pb.ScheduleTasksResponse]:
        return list(stub.ScheduleTasks(iter([request]), timeout=timeout))

    return call


def spec(key: str, micros: int | None = None, **fields: Any) -> pb.TaskSpec:
    msg = pb.TaskSpec(task="add", idempotency_key=key, **fields)
    msg.args.extend([1, 2])
    if micros is None:
        micros = int((datetime.now(UTC) + timedelta(hours=1)).timestamp() * 1_000_000)
    msg.run_time.seconds, nanos = divmod(micros, 1_000_000)
    msg.run_time.nanos = nanos * 1000
    return msg


def columns(template: pb.TaskSpec, micros: int, key: str) -> pb.ScheduleTasksRequest:
    request = pb.ScheduleTasksRequest()
    request.columns.templates.add().CopyFrom(template)
    request.columns.template_index.append(0)
    request.columns.run_time_micros.append(micros)
    request.columns.idempotency_keys.append(key)
    return request


def stored(store: Store, key: str) -> bool:
    return bool(store.redis.exists(store.keys.task(task_id_for(key))))


def nested(depth: int) -> dict[str, Any]:
    """An object ``depth`` objects deep (counting itself), with unicode at the bottom."""
    value: dict[str, Any] = {"leaf": "é😀", "n": 2**53 - 1}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


# -- run times at the end of the year 9999 --------------------------------------------------


def test_a_run_time_rounding_into_the_year_10000_is_refused_on_both_paths(
    served: Served,
) -> None:
    code, message, fields = refusal(
        served.stub.ScheduleTask, pb.ScheduleTaskRequest(spec=spec("edge-unary", EDGE_MICROS))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields == ["spec.run_time"]
    assert "9999-12-31T23:59:59.999Z" in message
    (reply,) = stream(served.stub)(_columns_without_time("edge-columns", EDGE_MICROS), 30)
    assert reply.results[0].outcome == pb.SCHEDULE_OUTCOME_REJECTED
    assert reply.results[0].error.field == "columns.run_time_micros[0]"
    assert reply.results[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert not stored(served.store, "edge-unary")
    assert not stored(served.store, "edge-columns")


def _columns_without_time(key: str, micros: int) -> pb.ScheduleTasksRequest:
    template = pb.TaskSpec(task="add")
    template.args.extend([1, 2])
    return columns(template, micros, key)


def test_the_latest_accepted_run_time_reads_back_everywhere(served: Served) -> None:
    created = served.stub.ScheduleTask(
        pb.ScheduleTaskRequest(spec=spec("latest-unary", LATEST_MICROS)), timeout=30
    )
    (reply,) = stream(served.stub)(_columns_without_time("latest-columns", LATEST_MICROS), 30)
    assert reply.results[0].outcome == pb.SCHEDULE_OUTCOME_CREATED
    latest = pb.ScheduleTaskResponse().task.spec.run_time
    latest.seconds, latest.nanos = MAX_SECONDS, 999_000_000
    for task_id in (created.task.id, reply.results[0].id):
        got = served.stub.GetTask(pb.GetTaskRequest(id=task_id), timeout=30).task
        assert got.spec.run_time == latest
    page = served.stub.ListTasks(pb.ListTasksRequest(page_size=1000), timeout=30)
    assert {created.task.id, reply.results[0].id} <= {t.id for t in page.tasks}
    cancelled = served.stub.CancelTask(pb.CancelTaskRequest(id=created.task.id), timeout=30)
    assert cancelled.task.state == pb.TASK_STATE_CANCELLED


# -- page tokens ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["1_0:r", " 1:r", "1:r r", "1:" + "r" * 100, "9" * 17 + ":r"])
def test_a_forged_page_token_is_invalid_argument(served: Served, text: str) -> None:
    token = base64.urlsafe_b64encode(text.encode()).decode()
    code, _, fields = refusal(served.stub.ListTasks, pb.ListTasksRequest(page_token=token))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields == ["page_token"]


# -- nesting --------------------------------------------------------------------------------


def test_nesting_past_the_limit_is_refused_naming_the_field(served: Served) -> None:
    # kwargs count as the first level: {"x": nested(MAX_NESTING)} is one level too deep.
    deep = spec("too-deep")
    del deep.args.values[:]
    deep.kwargs.update({"x": nested(MAX_NESTING), "y": 1})
    code, message, fields = refusal(served.stub.ScheduleTask, pb.ScheduleTaskRequest(spec=deep))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields == ["spec.kwargs"]
    assert f"more than {MAX_NESTING}" in message
    deep_args = spec("too-deep-args")
    del deep_args.args.values[:]
    deep_args.args.extend([nested(MAX_NESTING), 1])
    code, _, fields = refusal(served.stub.ScheduleTask, pb.ScheduleTaskRequest(spec=deep_args))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["spec.args"])
    template = pb.TaskSpec(task="add")
    template.kwargs.update({"x": nested(MAX_NESTING), "y": 1})
    (reply,) = stream(served.stub)(columns(template, LATEST_MICROS, "too-deep-columns"), 30)
    assert reply.results[0].error.field == "columns.templates[0].kwargs"
    for key in ("too-deep", "too-deep-args", "too-deep-columns"):
        assert not stored(served.store, key)


def test_the_deepest_accepted_nesting_reads_back_through_list_tasks(served: Served) -> None:
    deepest = nested(MAX_NESTING - 1)
    with Client.connect(served.address, token="") as client:
        by_kwargs = client.schedule(
            "nap", run_at=timedelta(days=365 * 500), kwargs={"seconds": deepest}, key="deepest"
        )
        by_args = client.schedule("add", deepest, 1, run_at=timedelta(days=365 * 500))
        listed = {t.id: t for t in client.tasks()}
        assert listed[by_kwargs.id].spec.kwargs == {"seconds": deepest}
        assert listed[by_args.id].spec.args == [deepest, 1]
        watched = client.watch(ids=[by_args.id], timeout=10)
        client.cancel(by_args.id)
        assert next(watched).spec.args == [deepest, 1]
        watched.close()
    page = served.stub.ListTasks(pb.ListTasksRequest(page_size=1000), timeout=30)
    assert pb.ListTasksResponse.FromString(page.SerializeToString()) == page


# -- echoes ---------------------------------------------------------------------------------


def test_a_megabyte_label_name_or_task_name_is_refused_with_a_short_message(
    served: Served,
) -> None:
    labelled = spec("big-label", labels={"x" * MB: "v"})
    code, message, fields = refusal(served.stub.ScheduleTask, pb.ScheduleTaskRequest(spec=labelled))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(message) < SHORT
    assert all(len(f) < SHORT for f in fields)
    named = spec("big-name")
    named.task = "y" * MB
    code, message, fields = refusal(served.stub.ScheduleTask, pb.ScheduleTaskRequest(spec=named))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields == ["spec.task"]
    assert len(message) < SHORT
    keyword = spec("big-keyword")
    keyword.kwargs.update({"z" * MB: 1})
    code, message, _ = refusal(served.stub.ScheduleTask, pb.ScheduleTaskRequest(spec=keyword))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(message) < SHORT


def test_a_megabyte_id_is_not_found_with_a_short_message(served: Served) -> None:
    for call, request in (
        (served.stub.GetTask, pb.GetTaskRequest(id="r" * MB)),
        (served.stub.CancelTask, pb.CancelTaskRequest(id="r" * MB)),
    ):
        code, message, _ = refusal(call, request)
        assert code == grpc.StatusCode.NOT_FOUND
        assert len(message) < SHORT


# -- durations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    # Each of these once read as a positive timedelta and was stored.
    [
        (5, -1),
        (3, -999_999_999),
        (0, 1_000_000_000),
        (2, -1_000_000_000),
        (10**12, 0),
        (0, 999_000),  # positive, but under the millisecond the store keeps
    ],
)
def test_an_invalid_duration_is_refused_naming_the_field(
    served: Served, seconds: int, nanos: int
) -> None:
    bad = spec(f"duration-{seconds}-{nanos}")
    bad.expires_after.CopyFrom(duration_pb2.Duration(seconds=seconds, nanos=nanos))
    code, _, fields = refusal(served.stub.ScheduleTask, pb.ScheduleTaskRequest(spec=bad))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["spec.expires_after"])
    assert not stored(served.store, f"duration-{seconds}-{nanos}")


# -- templates ------------------------------------------------------------------------------


def test_more_templates_than_rows_refuse_the_batch(served: Served) -> None:
    request = _columns_without_time("spare-templates", LATEST_MICROS)
    request.columns.templates.add().CopyFrom(request.columns.templates[0])
    code, message, fields = refusal(stream(served.stub), request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields == ["batch 0: columns.templates"]
    assert "2 templates for 1 rows" in message
    assert not stored(served.store, "spare-templates")


def test_a_template_too_large_for_any_task_is_refused_unread(served: Served) -> None:
    template = pb.TaskSpec(task="add")
    template.args.extend(["x" * (8 * MB), 1])
    (reply,) = stream(served.stub)(columns(template, LATEST_MICROS, "huge-template"), 30)
    assert reply.results[0].outcome == pb.SCHEDULE_OUTCOME_REJECTED
    assert reply.results[0].error.field == "columns.templates[0].args"
    assert "SCHEDKIT_MAX_ARGS_BYTES" in reply.results[0].error.message
    assert "the template takes" in reply.results[0].error.message  # by its size, unconverted
    assert not stored(served.store, "huge-template")


@pytest.mark.parametrize("path", ["unary", "specs"])
def test_a_spec_too_large_for_any_task_is_refused_unread(served: Served, path: str) -> None:
    """Converting megabytes of arguments costs seconds of the server's time (on the event
    loop, for a unary call): a spec is judged by its wire size first."""
    huge = spec("huge-spec")
    huge.kwargs.update({"blob": "x" * (8 * MB)})
    if path == "unary":
        code, message, fields = refusal(served.stub.ScheduleTask, pb.ScheduleTaskRequest(spec=huge))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert fields == ["spec.kwargs"]  # the field that takes most of it
    else:
        (reply,) = stream(served.stub)(pb.ScheduleTasksRequest(specs=[huge]), 30)
        message, field = reply.results[0].error.message, reply.results[0].error.field
        assert field == "specs[0].kwargs"
    assert "the spec takes" in message  # by its size, unconverted
    assert not stored(served.store, "huge-spec")
