"""ScheduleTasks batches in column form (TaskColumns), over a real server and store."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from schedkit.client.client import Client
from schedkit.model import Outcome, TaskSpec, task_id_for, to_micros
from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.v1 import schedule_service_pb2_grpc as pb_grpc
from schedkit.wire.convert import datetime_to_timestamp

CREATED, REJECTED = pb.SCHEDULE_OUTCOME_CREATED, pb.SCHEDULE_OUTCOME_REJECTED


def template(task: str = "add", *args: object, **labels: str) -> pb.TaskSpec:
    msg = pb.TaskSpec(task=task)
    msg.args.extend(list(args) or [1, 2])
    msg.labels.update(labels)
    return msg


def columns(
    templates: Sequence[pb.TaskSpec],
    index: Sequence[int],
    times: Sequence[datetime],
    keys: Sequence[str] = (),
) -> pb.ScheduleTasksRequest:
    request = pb.ScheduleTasksRequest()
    request.columns.templates.extend(templates)
    request.columns.template_index.extend(index)
    request.columns.run_time_micros.extend(to_micros(t) for t in times)
    request.columns.idempotency_keys.extend(keys)
    return request


def send(
    stub: pb_grpc.ScheduleServiceStub, *requests: pb.ScheduleTasksRequest
) -> list[pb.ScheduleResult]:
    return [r for response in stub.ScheduleTasks(iter(requests)) for r in response.results]


def later(hours: float = 5) -> datetime:
    return datetime.now(UTC) + timedelta(hours=hours)


def test_rows_become_tasks_of_their_template_time_and_key(
    stub: pb_grpc.ScheduleServiceStub, client: Client
) -> None:
    suite = uuid.uuid4().hex
    at = later().replace(microsecond=1500)  # half a millisecond: rounded alike in both forms
    keys = [f"{suite}-a", f"{suite}-b", f"{suite}-c"]
    request = columns(
        [template("add", 1, 2, suite=suite), template("add", 3, 4, suite=suite)],
        [0, 1, 0],
        [at, at + timedelta(minutes=1), at + timedelta(minutes=2)],
        keys,
    )
    results = send(stub, request)
    assert [r.outcome for r in results] == [CREATED] * 3
    assert [r.id for r in results] == [task_id_for(k) for k in keys]
    second = client.get(results[1].id)
    assert second.spec.args == [3, 4]
    assert second.spec.labels == {"suite": suite}
    assert second.spec.key == keys[1]
    # Stored to the millisecond, halves up: 1.5 ms is 2 ms.
    assert second.spec.run_at == (at + timedelta(minutes=1)).replace(microsecond=2000)
    # The same task sent as a spec is the same content: one task, not a conflict.
    again = client.schedule_spec(TaskSpec("add", at, [1, 2], key=keys[0], labels={"suite": suite}))
    assert again.outcome is Outcome.EXISTING
    assert again.task.id == results[0].id


def test_rows_without_keys_get_ids_of_their_own(
    stub: pb_grpc.ScheduleServiceStub, client: Client
) -> None:
    suite = uuid.uuid4().hex
    results = send(stub, columns([template(suite=suite)], [0, 0], [later(), later()]))
    assert [r.outcome for r in results] == [CREATED] * 2
    assert results[0].id != results[1].id
    assert {t.id for t in client.tasks(labels={"suite": suite})} == {r.id for r in results}


def test_a_bad_template_refuses_only_its_rows(
    stub: pb_grpc.ScheduleServiceStub, client: Client
) -> None:
    suite = uuid.uuid4().hex
    results = send(
        stub,
        columns(
            [template(suite=suite), template("no_such_task", suite=suite)],
            [0, 1, 0, 1],
            [later()] * 4,
        ),
    )
    assert [r.outcome for r in results] == [CREATED, REJECTED, CREATED, REJECTED]
    assert results[1].error.field == "columns.templates[1].task"
    assert "no_such_task" in results[3].error.message
    assert len(list(client.tasks(labels={"suite": suite}))) == 2


def test_bad_rows_name_their_column_and_index(stub: pb_grpc.ScheduleServiceStub) -> None:
    suite = uuid.uuid4().hex
    good = later()
    results = send(
        stub,
        columns(
            [template(suite=suite)],
            [0, 0, 0, 5],
            [good, good - timedelta(days=3), good, good],
            [f"{suite}-1", f"{suite}-2", "k" * 513, f"{suite}-4"],
        ),
    )
    assert [r.outcome for r in results] == [CREATED, REJECTED, REJECTED, REJECTED]
    assert results[1].error.field == "columns.run_time_micros[1]"
    assert "SCHEDKIT_PAST_TOLERANCE" in results[1].error.message
    assert results[2].error.field == "columns.idempotency_keys[2]"
    assert results[3].error.field == "columns.template_index[3]"
    assert "past the last of 1 templates" in results[3].error.message


def test_a_template_may_not_carry_a_row_field(stub: pb_grpc.ScheduleServiceStub) -> None:
    timed = template()
    timed.run_time.CopyFrom(datetime_to_timestamp(later()))
    keyed = template()
    keyed.idempotency_key = "shared"
    results = send(stub, columns([timed, keyed], [0, 1], [later(), later()]))
    assert [(r.outcome, r.error.field) for r in results] == [
        (REJECTED, "columns.templates[0].run_time"),
        (REJECTED, "columns.templates[1].idempotency_key"),
    ]


def test_run_times_beyond_a_timestamp_are_refused(stub: pb_grpc.ScheduleServiceStub) -> None:
    request = columns([template()], [0], [later()])
    request.columns.run_time_micros[0] = 2**62
    [result] = send(stub, request)
    assert result.error.field == "columns.run_time_micros[0]"
    assert "years 1 to 9999" in result.error.message


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: r.columns.run_time_micros.append(0), "batch 0: columns"),
        (lambda r: r.columns.idempotency_keys.append("one"), "batch 0: columns"),
        (lambda r: r.specs.append(template()), "batch 0: specs"),
    ],
    ids=["times", "keys", "specs-too"],
)
def test_a_malformed_batch_fails_the_stream_naming_it(
    stub: pb_grpc.ScheduleServiceStub, change: object, field: str
) -> None:
    request = columns([template()], [0, 0], [later(), later()])
    change(request)  # type: ignore[operator]
    with pytest.raises(grpc.RpcError) as caught:
        send(stub, request)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert field in caught.value.details()  # type: ignore[attr-defined]


def test_templates_repeated_across_batches_are_checked_alike(
    stub: pb_grpc.ScheduleServiceStub,
) -> None:
    # The server keeps converted templates between batches; a kept one must still be applied
    # with each row's own time and key, and a bad one refused again.
    suite = uuid.uuid4().hex
    shared = template(suite=suite)
    bad = template("add", 1, 2, 3, suite=suite)
    batches = [
        columns([shared, bad], [0, 1], [later(1), later(1)], [f"{suite}-{n}", f"{suite}-x{n}"])
        for n in range(3)
    ]
    results = send(stub, *batches)
    assert [r.outcome for r in results[::2]] == [CREATED] * 3
    assert len({r.id for r in results[::2]}) == 3
    assert [r.error.field for r in results[1::2]] == ["columns.templates[1].args"] * 3
