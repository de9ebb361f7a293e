"""Fuzz the servicer over a real gRPC server: any request message gets a deliberate answer.

No input may yield UNKNOWN or INTERNAL, kill the server, or leave a half-written task: a
refused spec leaves nothing behind, an accepted one reads back whole from GetTask.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schedkit.demo import app as demo_app
from schedkit.dispatch.registry import TaskRegistry
from schedkit.model import task_id_for
from schedkit.service.schedules import Schedules
from schedkit.service.server import Server
from schedkit.settings import Settings
from schedkit.store.store import Store
from schedkit.testing import redis_server
from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.v1 import schedule_service_pb2_grpc as pb_grpc

# Deliberate refusals; UNKNOWN and INTERNAL are bugs.
EXPECTED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
json_scalar = st.none() | st.booleans() | st.floats() | st.integers(-(2**70), 2**70) | text
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
timestamps = st.builds(
    timestamp_pb2.Timestamp,
    seconds=st.integers(-(2**63), 2**63 - 1) | st.integers(1_700_000_000, 1_900_000_000),
    nanos=st.integers(-(2**31), 2**31 - 1) | st.integers(0, 999_999_999),
)
durations = st.builds(
    duration_pb2.Duration,
    seconds=st.integers(-(2**63), 2**63 - 1) | st.integers(-10, 10**6),
    nanos=st.integers(-(2**31), 2**31 - 1),
)


@st.composite
def specs(draw: st.DrawFn) -> pb.TaskSpec:
    spec = pb.TaskSpec(
        task=draw(st.sampled_from(["add", "water_plants", "nap", "fail", " add ", ""]) | text),
        idempotency_key=draw(st.just("") | text),
        queue=draw(st.just("") | text),
        labels=draw(st.dictionaries(text, text, max_size=5)),
    )
    if draw(st.booleans()):
        spec.run_time.CopyFrom(draw(timestamps))
    if draw(st.booleans()):
        spec.args.extend(draw(st.lists(json_value, max_size=4)))
    if draw(st.booleans()):
        spec.kwargs.update(draw(st.dictionaries(text, json_value, max_size=4)))
    if draw(st.booleans()):
        spec.priority = draw(st.integers(-(2**31), 2**31 - 1))
    if draw(st.booleans()):
        spec.expires_after.CopyFrom(draw(durations))
    return spec


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[pb_grpc.ScheduleServiceStub, Store, grpc.Channel]]:
    with redis_server(appendonly=False) as redis:
        store = Store.from_url(redis.url)
        schedules = Schedules(store, TaskRegistry(demo_app), Settings(store_url=redis.url))
        server = Server(schedules, listen="127.0.0.1:0").start()
        try:
            with grpc.insecure_channel(server.address) as channel:
                yield pb_grpc.ScheduleServiceStub(channel), store, channel
        finally:
            server.stop(0)
            store.close()


def deliberate(call: Any, request: Any) -> Any:
    """The response, or None for an expected refusal; fails on UNKNOWN or INTERNAL."""
    try:
        return call(request, timeout=10)
    except grpc.RpcError as exc:
        error = exc
    code = error.code()  # type: ignore[attr-defined]
    assert code in EXPECTED, f"{code}: {error.details()}"  # type: ignore[attr-defined]
    return None


def still_serving(channel: grpc.Channel) -> None:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@FUZZ
@given(spec=specs())
def test_schedule_task_answers_every_spec_deliberately(
    served: tuple[pb_grpc.ScheduleServiceStub, Store, grpc.Channel], spec: pb.TaskSpec
) -> None:
    stub, store, channel = served
    keyed_id = task_id_for(spec.idempotency_key) if spec.idempotency_key else ""
    existed = bool(keyed_id) and store.redis.exists(store.keys.task(keyed_id)) == 1
    response = deliberate(stub.ScheduleTask, pb.ScheduleTaskRequest(spec=spec))
    if response is None:
        if keyed_id and not existed:
            assert store.redis.exists(store.keys.task(keyed_id)) == 0  # nothing half-written
    else:
        again = stub.GetTask(pb.GetTaskRequest(id=response.task.id), timeout=10)
        assert again.task == response.task
        assert again.task.spec.task == spec.task.strip()
    still_serving(channel)


@FUZZ
@given(batch=st.lists(specs(), min_size=1, max_size=6))
def test_schedule_tasks_answers_each_item_in_place(
    served: tuple[pb_grpc.ScheduleServiceStub, Store, grpc.Channel], batch: list[pb.TaskSpec]
) -> None:
    stub, _, channel = served

    def stream(requests: Iterator[pb.ScheduleTasksRequest], timeout: float) -> list[Any]:
        return list(stub.ScheduleTasks(requests, timeout=timeout))

    responses = deliberate(stream, iter([pb.ScheduleTasksRequest(specs=batch)]))
    if responses is not None:
        (response,) = responses
        assert len(response.results) == len(batch)
        for result in response.results:
            if result.outcome == pb.SCHEDULE_OUTCOME_REJECTED:
                assert grpc.StatusCode.INTERNAL.value[0] != result.error.code
                assert result.error.message
            else:
                assert stub.GetTask(pb.GetTaskRequest(id=result.id), timeout=10).task.id
    still_serving(channel)


@FUZZ
@given(
    states=st.lists(st.integers(-5, 20), max_size=4),
    task=text,
    labels=st.dictionaries(text, text, max_size=3),
    run_after=st.none() | timestamps,
    run_before=st.none() | timestamps,
    ids=st.lists(text, max_size=3),
    page_size=st.integers(-(2**31), 2**31 - 1) | st.integers(0, 50),
    page_token=text,
)
def test_list_get_and_cancel_answer_every_request_deliberately(
    served: tuple[pb_grpc.ScheduleServiceStub, Store, grpc.Channel],
    states: list[int],
    task: str,
    labels: dict[str, str],
    run_after: timestamp_pb2.Timestamp | None,
    run_before: timestamp_pb2.Timestamp | None,
    ids: list[str],
    page_size: int,
    page_token: str,
) -> None:
    stub, _, channel = served
    task_filter = pb.TaskFilter(states=states, task=task, labels=labels, ids=ids)
    if run_after is not None:
        task_filter.run_after.CopyFrom(run_after)
    if run_before is not None:
        task_filter.run_before.CopyFrom(run_before)
    request = pb.ListTasksRequest(filter=task_filter, page_size=page_size, page_token=page_token)
    deliberate(stub.ListTasks, request)
    for task_id in ids:
        deliberate(stub.GetTask, pb.GetTaskRequest(id=task_id))
        deliberate(stub.CancelTask, pb.CancelTaskRequest(id=task_id))
    still_serving(channel)
