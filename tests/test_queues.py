"""A task's queue can never poison the hand-off: queues are an allow-list, the broker keeps
out of the store's key space, and a message the broker refuses fails only its own task.

Over real parts: Redis on free ports, a real gRPC server, a real Celery worker.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from kombu.exceptions import OperationalError

from conftest import FAST, poll, violations
from schedkit.cli import main as cli_main
from schedkit.demo import app as demo_app
from schedkit.dispatch.dispatcher import message_refusal
from schedkit.dispatch.registry import TaskRegistry, declared_queues, worker_queues
from schedkit.errors import ConfigError
from schedkit.model import TaskState, to_micros
from schedkit.service.schedules import Schedules
from schedkit.service.server import Server
from schedkit.settings import Settings
from schedkit.store.store import Store
from schedkit.testing import LocalStack, local_stack
from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.v1 import schedule_service_pb2_grpc as pb_grpc
from schedkit.wire.convert import datetime_to_timestamp

REJECTED = pb.SCHEDULE_OUTCOME_REJECTED
HINT = "did you mean reports?"


def spec(queue: str = "", *, hours: float = 5) -> pb.TaskSpec:
    run = datetime.now(UTC) + timedelta(hours=hours)
    msg = pb.TaskSpec(task="add", queue=queue, run_time=datetime_to_timestamp(run))
    msg.args.extend([1, 2])
    return msg


def invalid(stub: pb_grpc.ScheduleServiceStub, msg: pb.TaskSpec) -> dict[str, str]:
    """The field violations of a ScheduleTask call that must fail with INVALID_ARGUMENT."""
    with pytest.raises(grpc.RpcError) as caught:
        stub.ScheduleTask(pb.ScheduleTaskRequest(spec=msg))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    return violations(caught.value)


def send(stub: pb_grpc.ScheduleServiceStub, request: pb.ScheduleTasksRequest) -> list[Any]:
    return [r for response in stub.ScheduleTasks(iter([request])) for r in response.results]


@pytest.fixture
def reports_stub(store: Store, settings: Settings) -> Iterator[pb_grpc.ScheduleServiceStub]:
    """A real server whose tasks may use the queues ``reports`` and ``celery``."""
    registry = TaskRegistry(demo_app, allow_queues="reports, celery")
    server = Server(Schedules(store, registry, settings), listen="127.0.0.1:0").start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            yield pb_grpc.ScheduleServiceStub(channel)
    finally:
        server.stop(0)


def test_a_disallowed_queue_is_refused_with_a_hint_on_every_path(
    reports_stub: pb_grpc.ScheduleServiceStub,
) -> None:
    assert HINT in invalid(reports_stub, spec("reprots"))["spec.queue"]

    specs = [spec(), spec("reports"), spec("celery"), spec("reprots")]
    results = send(reports_stub, pb.ScheduleTasksRequest(specs=specs))
    assert [r.outcome for r in results[:3]] == [pb.SCHEDULE_OUTCOME_CREATED] * 3
    assert results[3].outcome == REJECTED
    assert results[3].error.field == "specs[3].queue"
    assert HINT in results[3].error.message

    request = pb.ScheduleTasksRequest()
    templates = [spec("reprots"), spec("reports")]
    for template in templates:
        template.ClearField("run_time")  # rows carry the run times
    request.columns.templates.extend(templates)
    request.columns.template_index.extend([0, 1])
    run = to_micros(datetime.now(UTC) + timedelta(hours=5))
    request.columns.run_time_micros.extend([run, run])
    first, second = send(reports_stub, request)
    assert (first.outcome, first.error.field) == (REJECTED, "columns.templates[0].queue")
    assert HINT in first.error.message
    assert second.outcome == pb.SCHEDULE_OUTCOME_CREATED


def test_store_keys_and_unknown_queues_are_refused_by_default(
    stub: pb_grpc.ScheduleServiceStub,
) -> None:
    # The demo app declares no queues: only Celery's default one, where its worker listens.
    for hostile in ("schedkit:events", "schedkit:state:SCHEDULED", "no-such-queue", "unacked"):
        found = invalid(stub, spec(hostile))
        assert "not allowed" in found["spec.queue"], hostile
    huge = "schedkit:" + "x" * 10_000
    message = invalid(stub, spec(huge))["spec.queue"]
    assert len(message) < 300
    assert "x" * 100 not in message
    assert stub.ScheduleTask(pb.ScheduleTaskRequest(spec=spec("celery"))).task.spec.queue


def test_allowed_queues_default_to_what_the_app_declares() -> None:
    from celery import Celery
    from kombu import Queue

    app = Celery("queues-check", set_as_current=False)
    assert declared_queues(app) == {"celery"}
    app.conf.task_queues = [Queue("reports"), Queue("mail")]
    app.conf.task_routes = {"billing.*": {"queue": "billing"}, "other": "slow"}
    assert declared_queues(app) == {"reports", "mail", "billing", "slow"}
    assert TaskRegistry(app).queues() == {"reports", "mail", "billing", "slow"}
    assert TaskRegistry(app, allow_queues="x").queues() == {"x"}
    # The worker reads the allowed queues and those tasks without a queue are routed to.
    assert worker_queues(app, "x") == ["billing", "mail", "reports", "slow", "x"]


def test_the_embedded_broker_is_another_database_of_the_stores_redis(
    stack: LocalStack,
) -> None:
    store_url, broker_url = stack.settings.store_url, stack.settings.effective_broker_url
    assert store_url.endswith("/0")
    assert broker_url == store_url.removesuffix("/0") + "/1"
    assert stack.worker_command()[stack.worker_command().index("--broker") + 1] == broker_url
    with stack.client() as client:
        task = client.schedule("add", 1, 1, run_at=timedelta(0))
        assert client.wait_for(task.id, ["SUCCEEDED"], timeout=60).state is TaskState.SUCCEEDED
    broker = redis.Redis.from_url(broker_url, decode_responses=True)
    try:
        # Celery's keys are in the broker's database, schedkit's in the store's, never mixed.
        assert broker.exists("_kombu.binding.celery") == 1
        assert not broker.keys(f"{stack.settings.prefix}:*")
        assert stack.store is not None
        assert not stack.store.redis.keys("_kombu*")
        assert stack.store.redis.exists(stack.store.keys.task(task.id)) == 1
    finally:
        broker.close()


def test_a_broker_in_the_stores_database_is_refused_at_startup(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    port = redis_url.split(":")[2].split("/")[0]
    same = f"redis://localhost:{port}"  # the same database spelt another way
    with (
        pytest.raises(ConfigError, match="store's Redis database"),
        local_stack(store_url=redis_url, broker_url=same, worker=False),
    ):
        pass
    assert cli_main(["dispatch", "--store", redis_url, "--broker", same]) == 2
    assert "SCHEDKIT_BROKER_URL" in capsys.readouterr().err
    # Another database, another server or another kind of broker is fine.
    for broker in (f"redis://localhost:{port}/1", "redis://127.0.0.1:1/0", "amqp://h//"):
        assert Settings(store_url=redis_url, broker_url=broker).effective_broker_url == broker
    assert Settings(store_url=redis_url).effective_broker_url.endswith(f":{port}/1")


def wrapped(error: Exception) -> Exception:
    """``error`` as kombu raises it from a publish: inside an OperationalError."""
    try:
        try:
            raise error
        except Exception as exc:
            raise OperationalError(str(exc)) from exc
    except OperationalError as outer:
        return outer


def test_only_errors_about_one_message_fail_its_task() -> None:
    wrongtype = "Command # 1 (LLEN q) of pipeline caused error: WRONGTYPE Operation against a key"
    reason = message_refusal(wrapped(redis.ResponseError(wrongtype)))
    assert reason is not None
    assert "WRONGTYPE" in reason
    # The broker as a whole: away, full, read-only, or unknown. Never a task's fault.
    for error in (
        redis.ConnectionError("Connection refused"),
        redis.ResponseError("OOM command not allowed when used memory > 'maxmemory'"),
        redis.ReadOnlyError("You can't write against a read only replica."),
        OSError("broken pipe"),
        AttributeError("'NoneType' object has no attribute 'send'"),
    ):
        assert message_refusal(wrapped(error)) is None, error
        assert message_refusal(error) is None, error


def test_a_refused_message_fails_its_task_and_the_round_goes_on(
    tmp_path: Path,
) -> None:
    allow = "celery,reports,poisoned"
    with local_stack(data_dir=tmp_path / "data", allow_queues=allow, **FAST) as stack:
        assert stack.store is not None
        broker = redis.Redis.from_url(stack.settings.effective_broker_url)
        # The worker declared its queues; now the key that routes to "poisoned" becomes a
        # string, so publishing there fails with WRONGTYPE while the worker, which only pops
        # the queue lists, goes on. (A queue list of another type would stop its BRPOP too.)
        binding = "_kombu.binding.poisoned"
        poll(lambda: broker.exists(binding) == 1, 30, "the worker to declare its queues")
        broker.delete(binding)
        broker.set(binding, "not a set")
        with stack.client() as client:
            # Beyond the hand-off window, so one round claims them all, poisoned ones first.
            run_at = datetime.now(UTC) + timedelta(seconds=FAST["handoff_window"] + 2)
            poisoned = [
                client.schedule("add", n, 0, run_at=run_at - timedelta(milliseconds=10 - n),
                                queue="poisoned")
                for n in range(3)
            ]  # fmt: skip
            normal = [client.schedule("add", n, 1, run_at=run_at) for n in range(3)]
            # An allowed queue the app does not declare: the worker reads it too.
            normal.append(client.schedule("add", 9, 1, run_at=run_at, queue="reports"))
            for task in normal:
                done = client.wait_for(task.id, ["SUCCEEDED", "FAILED"], timeout=60)
                assert done.state is TaskState.SUCCEEDED
                assert done.started_at is not None
                assert done.started_at - done.spec.run_at < timedelta(seconds=2)
            for task in poisoned:
                failed = client.wait_for(task.id, ["FAILED"], timeout=30)
                assert "WRONGTYPE" in failed.error
                assert failed.finished_at is not None  # so retention purges it
        store = stack.store
        assert store.count(TaskState.FAILED) == 3
        assert not store.redis.zrange(store.keys.claims, 0, -1)
        assert int(store.redis.hget(store.keys.stats, "finished:FAILED") or 0) == 3
        broker.close()
