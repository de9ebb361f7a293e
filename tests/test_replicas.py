"""SCHEDKIT_STORE_REPLICAS: an OK schedule or cancel has reached that many replicas, and
nothing reaches a worker, or starts, before a replica has it.

A real primary and a real replica on free ports. The replica is frozen with SIGSTOP to stand
for one that lags or is cut off: a call acknowledged while it is frozen could not have been
confirmed by it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import redis

from conftest import FAST, poll
from schedkit.demo import app as demo_app
from schedkit.dispatch.registry import TaskRegistry
from schedkit.errors import ConfigError, Unavailable
from schedkit.model import TaskRecord, TaskSpec, TaskState
from schedkit.runtime.embedded import RedisServer
from schedkit.service.schedules import Schedules
from schedkit.service.server import Server
from schedkit.settings import Settings
from schedkit.store.claimed import Claimed
from schedkit.store.record import decode
from schedkit.store.replicas import Replicas
from schedkit.store.store import Store
from schedkit.testing import redis_server
from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.v1 import schedule_service_pb2_grpc as pb_grpc


@dataclass
class Pair:
    primary: RedisServer
    replica: RedisServer

    def freeze(self) -> None:
        assert self.replica.process is not None
        os.kill(self.replica.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.replica.process is not None
        os.kill(self.replica.process.pid, signal.SIGCONT)


@pytest.fixture
def pair() -> Iterator[Pair]:
    with redis_server(appendonly=False) as primary, redis_server(appendonly=False) as replica:
        replica_client = redis.Redis.from_url(replica.url, decode_responses=True)
        replica_client.replicaof("127.0.0.1", primary.port)
        poll(
            lambda: replica_client.info("replication")["master_link_status"] == "up",
            30,
            "the replica to connect",
        )
        pair = Pair(primary, replica)
        try:
            yield pair
        finally:
            pair.thaw()  # a frozen replica would not stop
            replica_client.close()


def serve(pair: Pair, replicas: int, timeout: float, partitions: int = 1) -> tuple[Server, Store]:
    settings = Settings(
        store_url=pair.primary.url,
        store_replicas=replicas,
        store_replica_timeout=timeout,
        store_partitions=partitions,
        **FAST,  # type: ignore[arg-type]
    )
    store = Store.for_settings(settings)
    schedules = Schedules(store, TaskRegistry(demo_app), settings)
    return Server(schedules, listen="127.0.0.1:0").start(), store


# One run time for the module: a retry must send the same content as the first try.
RUN_AT = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)


def spec(key: str) -> pb.TaskSpec:
    made = pb.TaskSpec(task="add", idempotency_key=key)
    made.args.extend([1, 2])
    made.run_time.FromDatetime(RUN_AT)
    return made


StubFor = Callable[..., tuple[pb_grpc.ScheduleServiceStub, Store]]


@pytest.fixture
def stub_for(pair: Pair) -> Iterator[StubFor]:
    """Makes a server on the pair's primary asking for ``replicas`` within ``timeout``."""
    opened: list[tuple[Server, Store, grpc.Channel]] = []

    def make(
        replicas: int, timeout: float, partitions: int = 1
    ) -> tuple[pb_grpc.ScheduleServiceStub, Store]:
        server, store = serve(pair, replicas, timeout, partitions)
        channel = grpc.insecure_channel(server.address)
        opened.append((server, store, channel))
        return pb_grpc.ScheduleServiceStub(channel), store

    yield make
    for server, store, channel in opened:
        channel.close()
        server.stop(0)
        store.close()


def test_an_ok_schedule_comes_only_after_the_replica_has_it(pair: Pair, stub_for: StubFor) -> None:
    stub, store = stub_for(1, 8.0)
    pair.freeze()
    call = stub.ScheduleTask.future(pb.ScheduleTaskRequest(spec=spec("after-thaw")), timeout=30)
    poll(lambda: store.count(TaskState.SCHEDULED) == 1, 10, "the primary to take the write")
    # The primary has the task; without the replica's word the call must still be waiting.
    with pytest.raises(grpc.FutureTimeoutError):
        call.result(timeout=2)
    pair.thaw()
    reply = call.result(timeout=10)
    replica = redis.Redis.from_url(pair.replica.url, decode_responses=True)
    assert replica.exists(store.keys.task(reply.task.id)) == 1
    replica.close()


def test_a_schedule_no_replica_confirms_fails_unavailable_and_a_retry_makes_one_task(
    pair: Pair, stub_for: StubFor
) -> None:
    stub, _ = stub_for(1, 0.3)
    pair.freeze()
    with pytest.raises(grpc.RpcError) as refused:
        stub.ScheduleTask(pb.ScheduleTaskRequest(spec=spec("k1")), timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "0 of 1 replicas" in refused.value.details()
    assert "SCHEDKIT_STORE_REPLICAS" in refused.value.details()
    # The batch stream (the synchronous store) says the same.
    with pytest.raises(grpc.RpcError) as batch_refused:
        list(stub.ScheduleTasks(iter([pb.ScheduleTasksRequest(specs=[spec("k2")])]), timeout=30))
    assert batch_refused.value.code() == grpc.StatusCode.UNAVAILABLE
    pair.thaw()
    first = stub.ScheduleTask(pb.ScheduleTaskRequest(spec=spec("k1")), timeout=30)
    again = stub.ScheduleTask(pb.ScheduleTaskRequest(spec=spec("k1")), timeout=30)
    assert first.task.id == again.task.id
    listed = stub.ListTasks(pb.ListTasksRequest(), timeout=30)
    assert [t.spec.idempotency_key for t in listed.tasks].count("k1") == 1


def test_over_partitions_a_batch_no_replica_confirms_fails_and_a_retry_makes_each_once(
    pair: Pair, stub_for: StubFor
) -> None:
    """Four partitions: a batch is one script per partition, then WAIT; unconfirmed, the
    batch and a single schedule fail UNAVAILABLE; thawed, the retries make each task once."""
    stub, store = stub_for(1, 0.3, 4)
    batch = pb.ScheduleTasksRequest(specs=[spec(f"part-{n}") for n in range(12)])
    pair.freeze()
    with pytest.raises(grpc.RpcError) as refused:
        list(stub.ScheduleTasks(iter([batch]), timeout=30))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "0 of 1 replicas" in refused.value.details()
    with pytest.raises(grpc.RpcError) as single:
        stub.ScheduleTask(pb.ScheduleTaskRequest(spec=spec("part-12")), timeout=30)
    assert single.value.code() == grpc.StatusCode.UNAVAILABLE
    pair.thaw()
    list(stub.ScheduleTasks(iter([batch]), timeout=30))
    list(stub.ScheduleTasks(iter([batch]), timeout=30))
    stub.ScheduleTask(pb.ScheduleTaskRequest(spec=spec("part-12")), timeout=30)
    listed = stub.ListTasks(pb.ListTasksRequest(page_size=100), timeout=30).tasks
    keys = sorted(t.spec.idempotency_key for t in listed)
    assert keys == sorted(f"part-{n}" for n in range(13))
    assert len({store.partition_of(t.id) for t in listed}) > 1


def test_a_cancel_no_replica_confirms_fails_unavailable(pair: Pair, stub_for: StubFor) -> None:
    stub, _ = stub_for(1, 0.3)
    task = stub.ScheduleTask(pb.ScheduleTaskRequest(spec=spec("to-cancel")), timeout=30).task
    pair.freeze()
    with pytest.raises(grpc.RpcError) as refused:
        stub.CancelTask(pb.CancelTaskRequest(id=task.id), timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "the cancel" in refused.value.details()
    pair.thaw()
    assert stub.CancelTask(pb.CancelTaskRequest(id=task.id), timeout=30).task.state == (
        pb.TASK_STATE_CANCELLED
    )


# The window covers RUN_AT: these claims stand for a dispatcher's at the task's due time.
WINDOW = 3 * 3600.0


def replica_record(pair: Pair, store: Store, task_id: str) -> TaskRecord:
    replica = redis.Redis.from_url(pair.replica.url, decode_responses=True)
    try:
        return decode(task_id, replica.hgetall(store.keys.task(task_id)))
    finally:
        replica.close()


def claimed_once_lapsed(claim: Callable[[], Sequence[Claimed]]) -> list[str]:
    """The ids ``claim`` returns once a refused claim's lease (0.5 s) has lapsed and the
    replica confirms: exactly one task is expected."""
    claimed: list[str] = []
    poll(
        lambda: bool(claimed.extend(c.id for c in claim()) or claimed),
        10,
        "the task to be claimed once the replica confirms",
    )
    assert len(claimed) == 1
    return claimed


def test_a_task_no_replica_has_confirmed_is_not_handed_off_until_one_has(
    pair: Pair, stub_for: StubFor
) -> None:
    """The caller was told UNAVAILABLE and will retry: were the task handed off now, a
    failover onto the replica would drop it, the retry would make it again, and it would run
    twice. So a claim waits for the replica too, and hands nothing off without it."""
    stub, store = stub_for(1, 0.3)
    pair.freeze()
    with pytest.raises(grpc.RpcError) as refused:
        stub.ScheduleTask(pb.ScheduleTaskRequest(spec=spec("unconfirmed")), timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert store.count(TaskState.SCHEDULED) == 1  # the primary has it
    with pytest.raises(Unavailable, match="took the claim, but 0 of 1 replicas"):
        store.claim(window_seconds=WINDOW, lease_seconds=0.5, limit=10)
    pair.thaw()
    claimed = claimed_once_lapsed(
        lambda: store.claim(window_seconds=WINDOW, lease_seconds=30, limit=10)
    )
    assert replica_record(pair, store, claimed[0]).spec.key == "unconfirmed"


def test_a_claim_sent_ahead_gives_nothing_to_hand_off_until_a_replica_confirms_it(
    pair: Pair, stub_for: StubFor
) -> None:
    """The dispatcher's loop claims its next round while it publishes one
    (Store.claim_later): those claims too are handed off only once a replica has them."""
    stub, store = stub_for(1, 0.3)
    stub.ScheduleTask(pb.ScheduleTaskRequest(spec=spec("ahead")), timeout=30)
    pair.freeze()
    answered = store.claim_later(window_seconds=WINDOW, lease_seconds=0.5, limit=10)
    with pytest.raises(Unavailable, match="took the claim, but 0 of 1 replicas"):
        answered()
    pair.thaw()
    claimed = claimed_once_lapsed(
        lambda: store.claim_later(window_seconds=WINDOW, lease_seconds=30, limit=10)()
    )
    assert replica_record(pair, store, claimed[0]).spec.key == "ahead"


def test_a_start_no_replica_confirms_is_refused_and_the_retry_starts_it_once(
    pair: Pair, stub_for: StubFor
) -> None:
    """The run-once guard holds across a failover only if the replica knows the task
    started: unconfirmed, start fails UNAVAILABLE (the hook asks Celery for a retry and
    runs nothing), on_retry's RETRYING record lets the retry start it, once."""
    stub, store = stub_for(1, 0.3)
    task_id = stub.ScheduleTask(pb.ScheduleTaskRequest(spec=spec("to-start")), timeout=30).task.id
    [claimed] = store.claim(window_seconds=WINDOW, lease_seconds=30, limit=10)
    store.mark_queued([claimed.id])
    pair.freeze()
    with pytest.raises(Unavailable, match="took the start, but 0 of 1 replicas"):
        store.start(task_id)
    with pytest.raises(Unavailable, match="took the finish"):
        store.finish(task_id, TaskState.RETRYING, error="schedule store unavailable")
    pair.thaw()
    assert store.start(task_id) == "started"
    assert store.start(task_id) == "duplicate:STARTED"
    assert replica_record(pair, store, task_id).state is TaskState.STARTED


def test_a_runs_start_in_a_later_partition_waits_for_the_replica_too(
    pair: Pair, stub_for: StubFor
) -> None:
    """A run of a schedule starts through the overlap guard in its schedule's partition
    (here not 0): that start, and the retry's RETRYING record, are waited for like any
    task's; the retry then starts it once."""
    from schedkit.recurrence import Recurrence
    from schedkit.recurring import ScheduleDef
    from schedkit.service.recurring import Recurring
    from schedkit.store.schedules import ScheduleStore

    _, store = stub_for(1, 0.3, partitions=4)
    schedule_id = next(f"r{n}" for n in range(100) if store.partition_of(f"r{n}") == 3)
    settings = Settings(store_url=pair.primary.url, store_partitions=4, **FAST)  # type: ignore[arg-type]
    recurring = Recurring(Schedules(store, TaskRegistry(demo_app), settings))
    definition = ScheduleDef(Recurrence(every=timedelta(days=1)), TaskSpec("add", RUN_AT, [1, 2]))
    recurring.create(schedule_id, definition)
    run_id = recurring.trigger(schedule_id).id
    assert store.partition_of(run_id) == 3
    [claimed] = store.claim(window_seconds=WINDOW, lease_seconds=30, limit=10)
    assert (claimed.id, claimed.partition) == (run_id, 3)
    store.mark_queued([run_id])
    guard = ScheduleStore(store)
    pair.freeze()
    with pytest.raises(Unavailable, match="took the start, but 0 of 1 replicas"):
        guard.start_run(run_id, buffer_ms=1000)
    with pytest.raises(Unavailable, match="took the finish"):
        store.finish(run_id, TaskState.RETRYING, error="schedule store unavailable")
    pair.thaw()
    assert guard.start_run(run_id, buffer_ms=1000) == "started"
    assert guard.start_run(run_id, buffer_ms=1000) == "duplicate:STARTED"
    replica = redis.Redis.from_url(pair.replica.url, decode_responses=True)
    try:
        raw = replica.hgetall(store.parts[3].task(run_id))
    finally:
        replica.close()
    assert decode(run_id, raw).state is TaskState.STARTED


def test_finish_records_no_replica_confirms_fail_so_the_recorder_writes_them_again(
    pair: Pair, stub_for: StubFor
) -> None:
    stub, store = stub_for(1, 0.3)
    task_id = stub.ScheduleTask(pb.ScheduleTaskRequest(spec=spec("to-end")), timeout=30).task.id
    [claimed] = store.claim(window_seconds=WINDOW, lease_seconds=30, limit=10)
    store.mark_queued([claimed.id])
    assert store.start(task_id) == "started"
    pair.freeze()
    record = (task_id, TaskState.SUCCEEDED, "3", "", "")
    with pytest.raises(Unavailable, match="took the finish"):
        store.finish_many([record])
    pair.thaw()
    store.finish_many([record])  # the Recorder's second try: changes nothing twice
    assert replica_record(pair, store, task_id).state is TaskState.SUCCEEDED
    assert store.redis.hget(store.keys.stats, "finished:SUCCEEDED") == "1"


def test_without_replicas_asked_a_frozen_replica_does_not_hold_a_call(
    pair: Pair, stub_for: StubFor
) -> None:
    stub, _ = stub_for(0, 0.3)
    pair.freeze()
    reply = stub.ScheduleTask(pb.ScheduleTaskRequest(spec=spec("primary-only")), timeout=30)
    assert reply.task.id


def test_a_short_store_timeout_alone_is_fine_when_no_replica_is_asked_for() -> None:
    settings = Settings(store_timeout=1.0)  # the replica timeout (1 s) is not used then
    assert Replicas.of(settings) == Replicas(0, 1.0)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"store_replicas": -1}, "SCHEDKIT_STORE_REPLICAS is -1"),
        ({"store_replicas": 1, "store_replica_timeout": 0.0}, "above 0 seconds"),
        (
            {"store_replicas": 1, "store_replica_timeout": 10.0, "store_timeout": 5.0},
            "below SCHEDKIT_STORE_TIMEOUT",
        ),
    ],
)
def test_replica_settings_that_cannot_work_are_refused_by_name(
    overrides: dict[str, object], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        Replicas.of(replace(Settings(), **overrides))  # type: ignore[arg-type]
