"""Bad input over a real gRPC server: the right status, the field named, nothing else lost."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from conftest import violations
from schedkit.client.client import Client
from schedkit.dispatch.registry import TaskRegistry
from schedkit.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SchedkitError,
    Unavailable,
)
from schedkit.model import Outcome, TaskSpec
from schedkit.service.schedules import Schedules
from schedkit.service.server import Server
from schedkit.settings import Settings
from schedkit.store.store import Store
from schedkit.testing import LocalStack
from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.v1 import schedule_service_pb2_grpc as pb_grpc
from schedkit.wire.convert import datetime_to_timestamp


def soon(seconds: float = 3600) -> pb.TaskSpec:
    return pb.TaskSpec(
        task="add", run_time=datetime_to_timestamp(datetime.now(UTC) + timedelta(seconds=seconds))
    )


def invalid(stub: pb_grpc.ScheduleServiceStub, spec: pb.TaskSpec) -> dict[str, str]:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ScheduleTask(pb.ScheduleTaskRequest(spec=spec))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    return violations(caught.value)


def test_unknown_task_lists_close_matches(stub: pb_grpc.ScheduleServiceStub) -> None:
    spec = soon()
    spec.task = "water_plant"
    found = invalid(stub, spec)
    assert "did you mean water_plants?" in found["spec.task"]


def test_missing_time_and_missing_task_are_both_named(stub: pb_grpc.ScheduleServiceStub) -> None:
    found = invalid(stub, pb.TaskSpec())
    assert set(found) == {"spec.task", "spec.run_time"}


def test_time_far_in_the_past_is_refused_not_run(stub: pb_grpc.ScheduleServiceStub) -> None:
    spec = soon(-3600)
    spec.args.extend([1, 2])
    found = invalid(stub, spec)
    assert "in the past" in found["spec.run_time"]
    assert "SCHEDKIT_PAST_TOLERANCE" in found["spec.run_time"]


def test_arguments_that_do_not_fit_the_signature(stub: pb_grpc.ScheduleServiceStub) -> None:
    spec = soon()
    spec.args.extend([1, 2, 3])
    assert "too many positional arguments" in invalid(stub, spec)["spec.args"]


def test_oversized_args_are_refused(stub: pb_grpc.ScheduleServiceStub) -> None:
    spec = soon()
    spec.task = "water_plants"
    spec.args.extend(["x" * 70_000])
    assert "SCHEDKIT_MAX_ARGS_BYTES" in invalid(stub, spec)["spec.args"]


def test_unparsable_time_is_refused(stub: pb_grpc.ScheduleServiceStub) -> None:
    spec = soon()
    spec.args.extend([1, 2])
    spec.run_time.seconds = 10**12  # after the year 9999
    assert "valid timestamp" in invalid(stub, spec)["spec.run_time"]


def test_empty_batch_fails_the_stream_after_earlier_batches_were_kept(
    stub: pb_grpc.ScheduleServiceStub, client: Client
) -> None:
    good = soon()
    good.args.extend([5, 5])
    good.labels["suite"] = "empty-batch"
    responses = stub.ScheduleTasks(
        iter([pb.ScheduleTasksRequest(specs=[good]), pb.ScheduleTasksRequest()])
    )
    first = next(responses)
    assert first.results[0].outcome == pb.SCHEDULE_OUTCOME_CREATED
    with pytest.raises(grpc.RpcError) as caught:
        next(responses)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert violations(caught.value) == {"batch 1: specs": "empty batch"}
    assert [t.id for t in client.tasks(labels={"suite": "empty-batch"})] == [first.results[0].id]


def test_a_bad_row_leaves_the_rest_of_the_batch_alone(client: Client) -> None:
    at = datetime.now(UTC) + timedelta(hours=5)
    specs = [
        TaskSpec("add", at, [1, 1], labels={"suite": "mixed"}),
        TaskSpec("ad", at, [1, 1], labels={"suite": "mixed"}),
        TaskSpec("add", at, [1, {"nested": object()}], labels={"suite": "mixed"}),
        TaskSpec("add", at - timedelta(days=2), [1, 1], labels={"suite": "mixed"}),
        TaskSpec("add", at, [2, 2], labels={"suite": "mixed"}),
    ]
    results = list(client.schedule_many(specs))
    assert [r.outcome for r in results] == [
        Outcome.CREATED,
        Outcome.REJECTED,
        Outcome.REJECTED,
        Outcome.REJECTED,
        Outcome.CREATED,
    ]
    fields = [r.error.violations[0].field for r in results if isinstance(r.error, SchedkitError)]
    assert fields == ["specs[1].task", "specs[2].args", "specs[3].run_time"]
    stored = {t.id for t in client.tasks(labels={"suite": "mixed"})}
    assert stored == {results[0].id, results[4].id}


def test_client_side_mistakes_name_the_field(client: Client) -> None:
    with pytest.raises(InvalidArgument) as naive:
        client.schedule("add", 1, 2, run_at=datetime(2031, 1, 1, 8, 0))
    assert naive.value.violations[0].field == "run_at"
    with pytest.raises(InvalidArgument) as not_a_list:
        client.schedule_spec(TaskSpec("add", datetime.now(UTC), "1, 2"))  # type: ignore[arg-type]
    assert not_a_list.value.violations[0].field == "args"
    with pytest.raises(InvalidArgument) as not_an_object:
        client.schedule_spec(TaskSpec("add", datetime.now(UTC), [1], [2]))  # type: ignore[arg-type]
    assert not_an_object.value.violations[0].field == "kwargs"


def test_a_closed_client_says_so_as_a_schedkit_error(stack: LocalStack) -> None:
    closed = stack.client()
    closed.close()
    with pytest.raises(Unavailable, match="closed"):
        closed.get("anything")
    with pytest.raises(Unavailable, match="closed"):
        list(closed.schedule_many([TaskSpec("add", datetime.now(UTC), [1, 2])]))
    with pytest.raises(Unavailable, match="closed"):
        closed.watch()


def test_unknown_id_is_not_found_and_finished_task_cannot_be_cancelled(client: Client) -> None:
    with pytest.raises(NotFound):
        client.get("nope")
    with pytest.raises(NotFound):
        client.cancel("nope")
    task = client.schedule("add", 1, 1, run_at=timedelta(0))
    client.wait_for(task.id, ["SUCCEEDED"], timeout=30)
    with pytest.raises(FailedPrecondition) as caught:
        client.cancel(task.id)
    assert "SUCCEEDED" in str(caught.value)


def test_bad_page_token_and_page_size_and_state_filter(stub: pb_grpc.ScheduleServiceStub) -> None:
    for request, field in [
        (pb.ListTasksRequest(page_token="garbage!"), "page_token"),
        (pb.ListTasksRequest(page_size=5000), "page_size"),
        (pb.ListTasksRequest(filter=pb.TaskFilter(states=[0])), "filter.states[0]"),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListTasks(request)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert field in violations(caught.value)


class Exploding(Schedules):
    def get(self, task_id: str) -> object:  # type: ignore[override]
        raise ZeroDivisionError("secret internals")


def test_unexpected_errors_are_internal_with_a_reference_never_unknown(
    store: Store, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    from schedkit.demo import app

    server = Server(Exploding(store, TaskRegistry(app), settings), listen="127.0.0.1:0").start()
    try:
        with (
            grpc.insecure_channel(server.address) as channel,
            pytest.raises(grpc.RpcError) as caught,
        ):
            pb_grpc.ScheduleServiceStub(channel).GetTask(pb.GetTaskRequest(id="x"))
    finally:
        server.stop(0)
    assert caught.value.code() is grpc.StatusCode.INTERNAL  # type: ignore[attr-defined]
    details = caught.value.details()  # type: ignore[attr-defined]
    assert "secret" not in details
    assert details.startswith("internal error (ref ")
    assert "ZeroDivisionError" in caplog.text


def test_store_down_is_unavailable(settings: Settings) -> None:
    from schedkit.demo import app
    from schedkit.runtime.embedded import free_port

    down = Store.from_url(f"redis://127.0.0.1:{free_port()}/0")
    server = Server(Schedules(down, TaskRegistry(app), settings), listen="127.0.0.1:0").start()
    try:
        with Client.connect(server.address) as client, pytest.raises(Unavailable) as caught:
            client.get("x")
    finally:
        server.stop(0)
    assert "schedule store unreachable" in str(caught.value)


def test_a_batch_refused_whole_on_the_client_is_not_sent(client: Client) -> None:
    # An empty request would fail the whole stream ("empty batch"); the client answers such a
    # batch from its local errors and goes on with the next.
    naive = datetime.now() + timedelta(hours=5)  # the mistake under test: no time zone
    good = TaskSpec("add", datetime.now(UTC) + timedelta(hours=5), [1, 1], labels={"s": "unsent"})
    results = list(
        client.schedule_many([TaskSpec("add", naive, [1, 1])] * 2 + [good], batch_size=2)
    )
    assert [r.outcome for r in results] == [Outcome.REJECTED, Outcome.REJECTED, Outcome.CREATED]
    assert isinstance(results[0].error, SchedkitError)
    assert results[0].error.violations[0].field == "specs[0].run_at"


def test_a_stream_the_server_never_answers_ends_with_unavailable(hung_server: str) -> None:
    at = datetime.now(UTC) + timedelta(hours=5)
    # Without the stall timeout this waits for ever (the suite's timeout would end it).
    with Client.connect(hung_server) as client, pytest.raises(Unavailable, match="no batch for 1s"):
        list(client.schedule_many([TaskSpec("add", at, [1, 1])], stall_timeout=1.0))
