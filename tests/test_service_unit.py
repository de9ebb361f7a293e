"""The servicer: messages in, messages out, over a real store and a real server, no worker.

grpc_testing cannot drive an asyncio servicer, so these go through a real server on
127.0.0.1:0 with a bare generated stub. Error statuses are tested in test_errors.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from schedkit.service.schedules import Schedules
from schedkit.service.server import Server
from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.v1 import schedule_service_pb2_grpc as pb_grpc
from schedkit.wire.convert import datetime_to_timestamp


@pytest.fixture
def server(schedules: Schedules) -> Iterator[pb_grpc.ScheduleServiceStub]:
    running = Server(schedules, listen="127.0.0.1:0").start()
    try:
        with grpc.insecure_channel(running.address) as channel:
            yield pb_grpc.ScheduleServiceStub(channel)
    finally:
        running.stop(0)


def unary(server: pb_grpc.ScheduleServiceStub, method: str, request: object) -> object:
    return getattr(server, method)(request, timeout=10)


def spec(task: str = "water_plants", *, in_seconds: float = 3600, **fields: object) -> pb.TaskSpec:
    msg = pb.TaskSpec(
        task=task, run_time=datetime_to_timestamp(datetime.now(UTC) + timedelta(seconds=in_seconds))
    )
    msg.args.extend(["fern"])
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


def test_schedule_task_returns_the_stored_task(server: pb_grpc.ScheduleServiceStub) -> None:
    request = pb.ScheduleTaskRequest(spec=spec(idempotency_key="a", queue="celery"))
    request.spec.labels["team"] = "green"
    response = unary(server, "ScheduleTask", request)
    assert isinstance(response, pb.ScheduleTaskResponse)
    assert response.outcome == pb.SCHEDULE_OUTCOME_CREATED
    assert response.task.state == pb.TASK_STATE_SCHEDULED
    assert list(response.task.spec.args) == ["fern"]
    assert response.task.spec.labels["team"] == "green"
    assert response.task.spec.queue == "celery"
    again = unary(server, "ScheduleTask", request)
    assert isinstance(again, pb.ScheduleTaskResponse)
    assert again.outcome == pb.SCHEDULE_OUTCOME_EXISTING
    assert again.task.id == response.task.id


def test_schedule_task_answers_exactly_what_get_task_reads_back(
    server: pb_grpc.ScheduleServiceStub,
) -> None:
    """A created task is answered without reading it back; the answer must still be the
    stored task, to the millisecond the store keeps."""
    request = pb.ScheduleTaskRequest(spec=spec("water_plants", idempotency_key="exact"))
    request.spec.run_time.nanos = 123_456_789  # finer than the store's milliseconds
    request.spec.kwargs.update({"litres": 2.0})
    request.spec.expires_after.FromTimedelta(timedelta(seconds=90, microseconds=1500))
    request.spec.priority = 3
    request.spec.labels["team"] = "green"
    created = unary(server, "ScheduleTask", request)
    assert isinstance(created, pb.ScheduleTaskResponse)
    assert created.outcome == pb.SCHEDULE_OUTCOME_CREATED
    got = unary(server, "GetTask", pb.GetTaskRequest(id=created.task.id))
    assert isinstance(got, pb.GetTaskResponse)
    assert created.task == got.task


def test_whole_numbers_arrive_as_ints(server: pb_grpc.ScheduleServiceStub) -> None:
    request = pb.ScheduleTaskRequest(spec=spec("add"))
    del request.spec.args[:]
    request.spec.args.extend([2, 2.5])
    response = unary(server, "ScheduleTask", request)
    assert isinstance(response, pb.ScheduleTaskResponse)
    got = unary(server, "GetTask", pb.GetTaskRequest(id=response.task.id))
    assert isinstance(got, pb.GetTaskResponse)
    assert list(got.task.spec.args) == [2, 2.5]


def test_batch_results_come_back_in_order_with_rejections_in_place(
    server: pb_grpc.ScheduleServiceStub,
) -> None:
    keyed = spec(idempotency_key="b1")
    batch = [keyed, spec("water_plant"), pb.TaskSpec(task="add"), spec()]
    changed = spec(idempotency_key="b1", in_seconds=60)
    requests = [
        pb.ScheduleTasksRequest(specs=batch),
        pb.ScheduleTasksRequest(specs=[keyed, changed]),
    ]
    response, second = server.ScheduleTasks(iter(requests), timeout=10)
    outcomes = [r.outcome for r in response.results]
    assert outcomes == [
        pb.SCHEDULE_OUTCOME_CREATED,
        pb.SCHEDULE_OUTCOME_REJECTED,
        pb.SCHEDULE_OUTCOME_REJECTED,
        pb.SCHEDULE_OUTCOME_CREATED,
    ]
    unknown, missing_time = response.results[1].error, response.results[2].error
    assert unknown.field == "specs[1].task"
    assert "water_plants" in unknown.message
    assert unknown.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert missing_time.field == "specs[2].run_time"
    assert second.results[0].outcome == pb.SCHEDULE_OUTCOME_EXISTING
    assert second.results[0].id == response.results[0].id
    assert second.results[1].outcome == pb.SCHEDULE_OUTCOME_REJECTED
    assert second.results[1].error.code == grpc.StatusCode.ALREADY_EXISTS.value[0]
    assert second.results[1].error.field == "specs[1].idempotency_key"


def test_list_tasks_pages_by_run_time(server: pb_grpc.ScheduleServiceStub) -> None:
    for n in range(5):
        unary(server, "ScheduleTask", pb.ScheduleTaskRequest(spec=spec(in_seconds=100 - n)))
    first = unary(server, "ListTasks", pb.ListTasksRequest(page_size=3))
    assert isinstance(first, pb.ListTasksResponse)
    assert len(first.tasks) == 3
    assert first.next_page_token
    rest = unary(
        server, "ListTasks", pb.ListTasksRequest(page_size=3, page_token=first.next_page_token)
    )
    assert isinstance(rest, pb.ListTasksResponse)
    times = [t.spec.run_time.ToDatetime() for t in [*first.tasks, *rest.tasks]]
    assert times == sorted(times)
    assert len(times) == 5
    assert rest.next_page_token == ""


def test_cancel_task_reports_cancelled(server: pb_grpc.ScheduleServiceStub) -> None:
    created = unary(server, "ScheduleTask", pb.ScheduleTaskRequest(spec=spec()))
    assert isinstance(created, pb.ScheduleTaskResponse)
    cancelled = unary(server, "CancelTask", pb.CancelTaskRequest(id=created.task.id))
    assert isinstance(cancelled, pb.CancelTaskResponse)
    assert cancelled.task.state == pb.TASK_STATE_CANCELLED
    assert cancelled.task.HasField("finish_time")


def test_list_task_types_shows_signature_and_doc(server: pb_grpc.ScheduleServiceStub) -> None:
    response = unary(server, "ListTaskTypes", pb.ListTaskTypesRequest())
    assert isinstance(response, pb.ListTaskTypesResponse)
    by_name = {t.name: t for t in response.task_types}
    assert sorted(by_name) == ["add", "fail", "flaky", "nap", "water_plants"]
    assert by_name["water_plants"].signature == "(plant: 'str', litres: 'float' = 1.0) -> 'str'"
    assert by_name["water_plants"].doc.startswith("Water a plant")
