"""A store split into partitions (SCHEDKIT_STORE_PARTITIONS) on one Redis: the core checks,
where tasks live, ListTasks merging the partitions' pages, the recorded partition count,
and dispatchers sharing the partitions by lease."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from conftest import poll
from schedkit.dispatch.leases import PartitionLeases
from schedkit.errors import ConfigError, InvalidArgument
from schedkit.model import TaskSpec, TaskState
from schedkit.settings import Settings
from schedkit.store.keys import partition_of, partition_prefix
from schedkit.store.record import NewTasks, Row
from schedkit.store.store import Store
from schedkit.testing import LocalStack, local_stack, redis_server
from store_checks import (
    a_killed_dispatchers_partitions_are_taken_over,
    a_schedule_is_materialized_and_its_runs_run,
    schedule_idempotency_list_and_cancel,
    schedules_of_every_partition_run_in_their_partitions,
    watch_hand_off_and_run_once,
)

PARTS = 4
LEASE = 2.0


@pytest.fixture(scope="module")
def parted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with local_stack(
        data_dir=tmp_path_factory.mktemp("parted"),
        store_partitions=PARTS,
        handoff_window=3.0,
        poll_interval=0.2,
        claim_lease=LEASE,
    ) as stack:
        yield stack


def test_schedule_idempotency_list_and_cancel_over_partitions(parted: LocalStack) -> None:
    schedule_idempotency_list_and_cancel(parted)


def test_a_task_is_watched_handed_off_and_run_once_over_partitions(parted: LocalStack) -> None:
    watch_hand_off_and_run_once(parted)


def test_a_schedule_is_materialized_and_its_runs_run_over_partitions(parted: LocalStack) -> None:
    a_schedule_is_materialized_and_its_runs_run(parted)


def test_a_task_lives_in_the_partition_its_id_hashes_to(parted: LocalStack) -> None:
    store = parted.store
    assert store is not None
    at = datetime.now(UTC) + timedelta(hours=2)
    with parted.client() as client:
        ids = [r.id for r in client.schedule_many([TaskSpec("add", at, [n, 1]) for n in range(40)])]
    homes = {task_id: partition_of(task_id, PARTS) for task_id in ids}
    assert set(homes.values()) == set(range(PARTS))  # 40 ids reach all four
    for task_id, home in homes.items():
        for partition in range(PARTS):
            key = store.parts[partition].task(task_id)
            assert store.redis.exists(key) == (1 if partition == home else 0)
    assert [store.parts[p].prefix for p in range(PARTS)] == [
        "schedkit",
        "{schedkit:1}",
        "{schedkit:2}",
        "{schedkit:3}",
    ]


def test_partition_prefixes_keep_a_hash_tag_of_the_prefix() -> None:
    assert partition_prefix("app", 0) == "app"
    assert partition_prefix("app", 3) == "{app:3}"
    assert partition_prefix("{schedkit}", 2) == "{schedkit:2}"
    assert partition_prefix("x{tag}y", 5) == "x{tag:5}y"


def test_pages_merge_partitions_by_run_time_each_task_once(parted: LocalStack) -> None:
    run = uuid.uuid4().hex[:8]
    base = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    # Three tasks share each run time, so ties are broken by id across partitions.
    specs = [
        TaskSpec("add", base + timedelta(seconds=n // 3), [n, 0], labels={"run": run})
        for n in range(90)
    ]
    with parted.client() as client:
        ids = [r.id for r in client.schedule_many(specs)]
        expected = sorted(zip([s.run_at for s in specs], ids, strict=True))
        for size in (1, 7, 500):
            listed = list(client.tasks(labels={"run": run}, page_size=size))
            assert [(t.spec.run_at, t.id) for t in listed] == expected
        cancelled = sorted(ids[::4])
        for task_id in cancelled:
            client.cancel(task_id)
        listed = list(client.tasks(labels={"run": run}, states=["CANCELLED"], page_size=4))
        assert sorted(t.id for t in listed) == cancelled
        assert [t.spec.run_at for t in listed] == sorted(t.spec.run_at for t in listed)
        later = list(
            client.tasks(labels={"run": run}, run_after=base + timedelta(seconds=20), page_size=6)
        )
        assert [t.id for t in later] == [
            i for at, i in expected if at >= base + timedelta(seconds=20)
        ]


def test_a_forged_or_altered_page_token_is_invalid_argument(parted: LocalStack) -> None:
    with parted.client() as client:
        client.schedule_many([TaskSpec("add", datetime.now(UTC) + timedelta(days=1), [1, 2])] * 3)
        _, token = client.tasks_page(page_size=1)
        assert token
        text = base64.urlsafe_b64decode(token).decode()
        altered = [
            "forged",
            token[:-2],
            base64.urlsafe_b64encode(b"99999999999999999:" + text.split(":")[1].encode()).decode(),
            base64.urlsafe_b64encode((text + "!").encode()).decode(),
        ]
        for bad in altered:
            with pytest.raises(InvalidArgument, match="page_token"):
                client.tasks_page(page_size=1, page_token=bad)


def test_metrics_sum_the_partitions(parted: LocalStack) -> None:
    store = parted.store
    assert store is not None
    parked = sum(int(store.redis.zcard(keys.state("SCHEDULED"))) for keys in store.parts)
    assert store.count(TaskState.SCHEDULED) == parked
    from schedkit.runtime.metrics import StoreCollector

    stats, states, *_ = StoreCollector(store)._read()
    assert states["SCHEDULED"] == parked
    scheduled = sum(int(store.redis.hget(keys.stats, "scheduled") or 0) for keys in store.parts)
    assert int(stats["scheduled"]) == scheduled > 0


def test_the_store_refuses_a_process_with_another_partition_count(tmp_path: Path) -> None:
    with redis_server(appendonly=False) as server:
        first = Store.for_settings(Settings(store_url=server.url, store_partitions=3))
        first.close()
        with pytest.raises(ConfigError, match=r"created with 3 partition.*PARTITIONS=2"):
            Store.for_settings(Settings(store_url=server.url, store_partitions=2))
        with pytest.raises(ConfigError, match=r"created with 3 partition.*PARTITIONS=1"):
            Store.for_settings(Settings(store_url=server.url))
        # A store from before partitions (no meta key, but totals) had one.
        redis.Redis.from_url(server.url).hset("old:stats", "scheduled", 5)
        with pytest.raises(ConfigError, match=r"created with 1 partition.*PARTITIONS=4"):
            Store.for_settings(Settings(store_url=server.url, prefix="old", store_partitions=4))


def test_a_dispatcher_given_another_partition_count_refuses_to_start(parted: LocalStack) -> None:
    env = {
        **os.environ,
        "SCHEDKIT_STORE_URL": parted.settings.store_url,
        "SCHEDKIT_BROKER_URL": parted.settings.effective_broker_url,
        "SCHEDKIT_STORE_PARTITIONS": "2",
    }
    done = subprocess.run(
        [sys.executable, "-m", "schedkit", "dispatch"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "created with 4 partition(s)" in done.stderr
    assert "SCHEDKIT_STORE_PARTITIONS=2" in done.stderr


@pytest.mark.parametrize("count", [0, -1, 257])
def test_a_partition_count_out_of_bounds_is_refused_naming_the_setting(count: int) -> None:
    with pytest.raises(ConfigError, match=f"SCHEDKIT_STORE_PARTITIONS is {count}: give"):
        Store.for_settings(Settings(store_url="redis://127.0.0.1:1/0", store_partitions=count))


def test_dispatchers_share_partitions_and_take_over_a_killed_ones(tmp_path: Path) -> None:
    with local_stack(
        data_dir=tmp_path / "data",
        store_partitions=PARTS,
        handoff_window=1.0,
        poll_interval=0.2,
        claim_lease=LEASE,
    ) as stack:
        a_killed_dispatchers_partitions_are_taken_over(stack)


def test_a_client_reads_a_run_of_a_schedule_in_its_schedules_partition(
    parted: LocalStack,
) -> None:
    """A run lives in its schedule's partition, where its id hashes; get, cancel and list
    find it there, and no other partition has it."""
    store = parted.store
    assert store is not None
    schedule_id = f"later-{uuid.uuid4().hex[:8]}"
    home = store.partition_of(schedule_id)
    with parted.client() as client:
        # Every two minutes: the next run is parked ahead (the lookahead is five).
        client.create_schedule(schedule_id, "add", args=[1, 2], every=timedelta(minutes=2))
        runs_of = {"schedkit.schedule": schedule_id}
        try:
            poll(
                lambda: bool(list(client.tasks(labels=runs_of, states=["SCHEDULED"]))),
                30,
                "a parked run",
            )
            run = next(iter(client.tasks(labels=runs_of, states=["SCHEDULED"])))
            assert store.partition_of(run.id) == home
            for partition in range(PARTS):
                key = store.parts[partition].task(run.id)
                assert store.redis.exists(key) == (1 if partition == home else 0)
            assert client.get(run.id).id == run.id
            assert client.cancel(run.id).state == TaskState.CANCELLED
        finally:
            client.delete_schedule(schedule_id)


def test_schedules_of_every_partition_run_in_their_partitions(parted: LocalStack) -> None:
    schedules_of_every_partition_run_in_their_partitions(parted)


def test_a_batch_is_split_by_partition_each_part_with_only_its_templates() -> None:
    store = Store(redis.Redis(port=1), partitions=PARTS)  # no round trip: nothing is sent
    ids = [f"k{n:03d}" for n in range(40)]
    templates = [[f"t{n}"] for n in range(5)]
    rows = [Row(task_id, "", "", 1000 + n, n % 5) for n, task_id in enumerate(ids)]
    parts = store.split(NewTasks(templates, rows, 7))
    assert [part.partition for part in parts] == sorted({partition_of(i, PARTS) for i in ids})
    for part in parts:
        originals = [rows[n] for n in part.positions]
        assert [r.id for r in part.tasks.rows] == [r.id for r in originals]
        assert all(partition_of(r.id, PARTS) == part.partition for r in originals)
        # Each row still names its own template's fields, and no part carries another's.
        for row, original in zip(part.tasks.rows, originals, strict=True):
            assert part.tasks.templates[row.template] == templates[original.template]
        assert len(part.tasks.templates) == len({r.template for r in originals})
    verdicts = [[1 if n % 2 else 2 for n in part.positions] for part in parts]
    results = Store.merge_results(NewTasks(templates, rows, 7), parts, verdicts)
    assert [r.id for r in results] == ids
    assert [r.outcome.name for r in results] == [
        "CREATED" if n % 2 else "EXISTING" for n in range(len(ids))
    ]


def test_leases_cover_every_partition_once_and_outlive_a_silent_dispatcher() -> None:
    """Three dispatchers' leases over four partitions: each partition held by exactly one,
    shares of 1 to 2; one stops renewing (dead), and within its lease the other two hold all
    four between them."""
    with redis_server(appendonly=False) as server:
        store = Store.from_url(server.url, partitions=PARTS)
        leases = [PartitionLeases(store, 0.5, owner=f"d{n}") for n in range(3)]

        def held(alive: list[PartitionLeases]) -> list[set[int]]:
            return [set(lease.current()) for lease in alive]

        def covered_once(alive: list[PartitionLeases]) -> bool:
            shares = held(alive)
            every = [p for share in shares for p in share]
            return sorted(every) == list(range(PARTS)) and max(map(len, shares)) <= -(
                -PARTS // len(alive)
            )

        poll(lambda: covered_once(leases), 10, "the partitions shared, each once")
        assert sorted(len(share) for share in held(leases)) == [1, 1, 2]
        poll(lambda: covered_once(leases[1:]), 0.5 + 2, "the living two to take it all")
        assert sorted(len(share) for share in held(leases[1:])) == [2, 2]
        store.close()


def test_overlapped_rounds_settle_each_task_in_its_partition() -> None:
    """The dispatcher's loop holds a full round's QUEUED marks and sends them with the next
    round (one pipelined batch per server): over four partitions every task ends QUEUED in
    its own partition, its claim settled there."""
    from celery import Celery

    from conftest import schedule_ids
    from schedkit.demo import app as demo_app
    from schedkit.dispatch.dispatcher import Dispatcher
    from schedkit.dispatch.registry import TaskRegistry
    from schedkit.service.schedules import Schedules

    with redis_server(appendonly=False) as server:
        settings = Settings(
            store_url=server.url, store_partitions=PARTS, claim_batch=10, max_in_flight=0
        )
        store = Store.for_settings(settings)
        schedules = Schedules(store, TaskRegistry(demo_app), settings)
        now = datetime.now(UTC)
        ids = schedule_ids(schedules, [TaskSpec("add", now, [n, 0]) for n in range(25)])
        dispatcher = Dispatcher(store, Celery("overlap-parts"), settings)
        handed = [dispatcher.run_once(overlap=True) for _ in range(3)]
        assert handed == [10, 10, 5]
        dispatcher.run_once(overlap=True)  # nothing due: what was held goes out
        assert {store.get(i).state for i in ids} == {TaskState.QUEUED}
        for partition in range(PARTS):
            keys = store.parts[partition]
            assert store.redis.zcard(keys.claims) == 0
            home = [i for i in ids if partition_of(i, PARTS) == partition]
            assert store.redis.zcard(keys.state("QUEUED")) == len(home)
        store.close()
