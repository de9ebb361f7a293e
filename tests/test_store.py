"""The store against a real Redis: idempotency, claims and leases, state rules, paging, memory."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from conftest import schedule_ids, schedule_specs
from schedkit.client.client import Client
from schedkit.errors import AlreadyExists, InvalidArgument
from schedkit.model import Outcome, TaskSpec, TaskState
from schedkit.service.schedules import Schedules
from schedkit.service.server import Server
from schedkit.service.watch import ChangeFeed
from schedkit.store.aio import AsyncStore
from schedkit.store.codec import StateChange
from schedkit.store.query import TaskQuery
from schedkit.store.store import Store

T0 = datetime(2030, 1, 1, 8, 0, tzinfo=UTC)


@pytest.fixture(params=[1, 4], ids=["P1", "P4"])
def store(redis_url: str, request: pytest.FixtureRequest) -> Iterator[Store]:
    """Every check on a store of one partition and on one of four (store partitions)."""
    opened = Store.from_url(redis_url, partitions=request.param)
    yield opened
    opened.close()


def spec(n: int = 0, *, key: str = "", at: datetime = T0, **extra: object) -> TaskSpec:
    return TaskSpec("add", at + timedelta(seconds=n), [n, 1], key=key, **extra)  # type: ignore[arg-type]


BEFORE = T0 - timedelta(hours=1)  # when the tests' tasks are scheduled: all in the future


def put(schedules: Schedules, specs: list[TaskSpec], now: datetime = BEFORE) -> list[str]:
    return schedule_ids(schedules, specs, now=now)


def test_same_key_same_content_is_existing_and_other_content_is_refused(
    schedules: Schedules, store: Store
) -> None:
    first = spec(key="water-1")
    (task_id,) = put(schedules, [first])
    again = schedule_specs(schedules, [first], now=BEFORE)
    assert again[0].outcome is Outcome.EXISTING
    assert again[0].id == task_id
    changed = spec(5, key="water-1")
    refused = schedule_specs(schedules, [changed], now=BEFORE)
    assert refused[0].outcome is Outcome.REJECTED
    assert isinstance(refused[0].error, AlreadyExists)
    assert store.get(task_id).spec.run_at == first.run_at  # not overwritten


def test_claim_takes_only_the_window_and_never_twice(schedules: Schedules, store: Store) -> None:
    ids = put(schedules, [spec(n) for n in range(10)])
    claimed = store.claim(window_seconds=4.5, lease_seconds=30, limit=100, now=T0)
    assert [c.id for c in claimed] == ids[:5]  # run times T0..T0+4s
    assert store.claim(window_seconds=4.5, lease_seconds=30, limit=100, now=T0) == []
    store.mark_queued([c.id for c in claimed], now=T0)
    assert {store.get(i).state for i in ids[:5]} == {TaskState.QUEUED}
    assert {store.get(i).state for i in ids[5:]} == {TaskState.SCHEDULED}


def test_lapsed_claim_returns_to_the_due_index(schedules: Schedules, store: Store) -> None:
    """A dispatcher that claims and then dies: after the lease, another one claims again."""
    (task_id,) = put(schedules, [spec()])
    assert [c.id for c in store.claim(window_seconds=1, lease_seconds=10, limit=9, now=T0)] == [
        task_id
    ]
    still_leased = T0 + timedelta(seconds=9)
    assert store.claim(window_seconds=1, lease_seconds=10, limit=9, now=still_leased) == []
    lapsed = T0 + timedelta(seconds=11)
    assert [c.id for c in store.claim(window_seconds=1, lease_seconds=10, limit=9, now=lapsed)] == [
        task_id
    ]


def test_release_makes_a_task_due_again(schedules: Schedules, store: Store) -> None:
    (task_id,) = put(schedules, [spec()])
    store.claim(window_seconds=1, lease_seconds=60, limit=9, now=T0)
    store.release([task_id], now=T0)
    assert [c.id for c in store.claim(window_seconds=1, lease_seconds=60, limit=9, now=T0)] == [
        task_id
    ]


def test_start_is_refused_when_cancelled_or_already_started(
    schedules: Schedules, store: Store
) -> None:
    a, b = put(schedules, [spec(0), spec(1)])
    store.claim(window_seconds=5, lease_seconds=60, limit=9, now=T0)
    store.mark_queued([a, b], now=T0)
    assert store.start(a, now=T0) == "started"
    assert store.start(a, now=T0) == "duplicate:STARTED"
    assert store.cancel(b, now=T0) == ("cancelled", TaskState.QUEUED)
    assert store.start(b, now=T0) == "cancelled"
    assert store.start("not-a-schedkit-id", now=T0) == "unmanaged"


def test_a_claimed_task_may_start_before_it_is_marked_queued(
    schedules: Schedules, store: Store
) -> None:
    (task_id,) = put(schedules, [spec()])
    store.claim(window_seconds=1, lease_seconds=60, limit=9, now=T0)
    assert store.start(task_id, now=T0) == "started"
    store.mark_queued([task_id], now=T0)  # the dispatcher settles late: must not go back
    assert store.get(task_id).state is TaskState.STARTED


def test_cancel_is_refused_once_started_and_idempotent_when_cancelled(
    schedules: Schedules, store: Store
) -> None:
    a, b = put(schedules, [spec(0), spec(1)])
    store.claim(window_seconds=5, lease_seconds=60, limit=9, now=T0)
    store.start(a, now=T0)
    assert store.cancel(a, now=T0) == ("refused", TaskState.STARTED)
    assert store.cancel(b, now=T0)[0] == "cancelled"
    assert store.cancel(b, now=T0)[0] == "already"
    assert store.cancel("nope", now=T0)[0] == "missing"


def test_expired_tasks_are_not_handed_off(schedules: Schedules, store: Store) -> None:
    (task_id,) = put(schedules, [spec(expires_after=timedelta(seconds=10))])
    late = T0 + timedelta(seconds=11)
    assert store.claim(window_seconds=1, lease_seconds=60, limit=9, now=late) == []
    record = store.get(task_id)
    assert record.state is TaskState.EXPIRED
    assert record.finished_at == late


def test_finish_records_result_only_for_started_tasks(schedules: Schedules, store: Store) -> None:
    (task_id,) = put(schedules, [spec()])
    assert not store.finish(task_id, TaskState.SUCCEEDED, result="2", now=T0)
    store.claim(window_seconds=1, lease_seconds=60, limit=9, now=T0)
    store.start(task_id, now=T0)
    assert store.finish(task_id, TaskState.FAILED, error="RuntimeError: x", traceback="tb", now=T0)
    record = store.get(task_id)
    assert (record.state, record.error, record.traceback, record.attempts) == (
        TaskState.FAILED,
        "RuntimeError: x",
        "tb",
        1,
    )


def test_pages_cover_every_task_once_in_run_time_order_with_ties(
    schedules: Schedules, store: Store
) -> None:
    rng = random.Random(7)
    # Many tasks share run times (timetables do), across several states.
    specs = [spec(rng.randrange(5), key=f"k{i}") for i in range(120)]
    ids = put(schedules, specs)
    store.claim(window_seconds=2.5, lease_seconds=60, limit=30, now=T0)
    store.mark_queued(ids, now=T0)
    for task_id in ids[::7]:
        store.cancel(task_id, now=T0)
    seen: list[tuple[datetime, str]] = []
    token = ""
    while True:
        page, token = store.page(TaskQuery(), page_size=11, page_token=token)
        seen += [(r.spec.run_at, r.id) for r in page]
        if not token:
            break
    assert len(seen) == len(set(seen)) == 120
    assert seen == sorted(seen)


def test_filters_by_state_task_label_and_time(schedules: Schedules, store: Store) -> None:
    ids = put(
        schedules,
        [spec(n, key=f"f{n}", labels={"team": "green" if n % 2 else "blue"}) for n in range(20)],
    )
    store.cancel(ids[3], now=T0)
    green, _ = store.page(TaskQuery(labels=(("team", "green"),)), page_size=100)
    assert [r.id for r in green] == ids[1::2]
    cancelled, _ = store.page(TaskQuery(states=frozenset({TaskState.CANCELLED})), page_size=100)
    assert [r.id for r in cancelled] == [ids[3]]
    window, _ = store.page(
        TaskQuery(run_after=T0 + timedelta(seconds=5), run_before=T0 + timedelta(seconds=8)),
        page_size=100,
    )
    assert [r.id for r in window] == ids[5:8]
    assert store.page(TaskQuery(task="water_plants"), page_size=100) == ([], "")


def test_a_sparse_filter_pages_on_without_losing_tasks(schedules: Schedules, store: Store) -> None:
    """A filter that matches rarely returns short pages with a token, never skips a match."""
    ids = put(
        schedules, [spec(n, key=f"s{n}", labels={"hit": str(n % 50 == 0)}) for n in range(400)]
    )
    found: list[str] = []
    token = ""
    for _ in range(100):
        page, token = store.page(
            TaskQuery(labels=(("hit", "True"),)), page_size=5, page_token=token, scan_budget=30
        )
        found += [r.id for r in page]
        if not token:
            break
    assert found == ids[::50]


def test_a_filter_behind_many_other_tasks_still_fills_the_page(
    schedules: Schedules, store: Store
) -> None:
    """Matches that sit after more non-matches than one scan budget come back in one call."""
    # 90 non-matches in each partition, ahead of the matches.
    put(schedules, [spec(n % 99, key=f"early{n}") for n in range(90 * store.partitions)])
    late = put(
        schedules, [spec(100 + n, key=f"late{n}", labels={"team": "late"}) for n in range(4)]
    )
    query = TaskQuery(labels=(("team", "late"),))
    one_round, token = store.page(query, page_size=4, scan_budget=30, max_rounds=1)
    assert (one_round, bool(token)) == ([], True)  # the budget stops a single round short
    page, token = store.page(query, page_size=4, scan_budget=30)
    assert [r.id for r in page] == late


def test_garbage_page_token_names_the_field(store: Store) -> None:
    with pytest.raises(InvalidArgument) as caught:
        store.page(TaskQuery(), page_size=5, page_token="%%%")
    assert caught.value.violations[0].field == "page_token"


def test_purge_forgets_only_tasks_finished_before_the_cutoff(
    schedules: Schedules, store: Store
) -> None:
    old, recent, parked = put(schedules, [spec(0), spec(1), spec(2)])
    store.cancel(old, now=T0)
    store.cancel(recent, now=T0 + timedelta(days=3))
    assert store.purge(finished_before=T0 + timedelta(days=1)) == 1
    assert [r.id for r in store.get_many([old, recent, parked]) if r] == [recent, parked]


def test_parked_task_costs_at_most_400_bytes_of_redis_memory(
    schedules: Schedules, store: Store
) -> None:
    """The design budget for parked tasks, measured on a timetable-like task with a key."""
    count = 20_000
    before = int(store.redis.info("memory")["used_memory"])
    for start in range(0, count, 1000):
        batch = [
            TaskSpec(
                "water_plants",
                T0 + timedelta(seconds=n),
                ["fern"],
                {"litres": 2},
                key=f"timetable.csv:{n}",
            )
            for n in range(start, start + 1000)
        ]
        put(schedules, batch)
    store.redis.xtrim(store.keys.events, maxlen=0)  # the bounded event log is not per task
    after = int(store.redis.info("memory")["used_memory"])
    per_task = (after - before) / count
    print(f"store memory per parked task: {per_task:.0f} bytes")
    assert per_task <= 400


def advance(store: Store, task_id: str) -> None:
    """Take a task through QUEUED, STARTED and SUCCEEDED, as dispatcher and worker would."""
    assert [c.id for c in store.claim(window_seconds=3, lease_seconds=60, limit=5, now=T0)] == [
        task_id
    ]
    store.mark_queued([task_id], now=T0)
    assert store.start(task_id, now=T0) == "started"
    assert store.finish(task_id, TaskState.SUCCEEDED, result="2", now=T0)


def test_watch_reports_each_change_with_its_own_state_when_read_together(
    schedules: Schedules, store: Store
) -> None:
    """Changes that land between two reads of the stream share one (final) record."""
    (task_id,) = put(schedules, [spec(key="watched")])

    async def watch() -> list[TaskState]:
        # The server's change feed, its cursor taken before the changes: its first read
        # takes all three together.
        aio = AsyncStore(store)
        feed = ChangeFeed(aio)
        changes = feed.follow(TaskQuery(ids=frozenset({task_id})), await feed.latest())
        advance(store, task_id)
        try:
            return [(await anext(changes))[0].state for _ in range(3)]
        finally:
            await changes.aclose()
            await feed.close()
            await aio.close()

    states = asyncio.run(asyncio.wait_for(watch(), timeout=10))
    assert states == [TaskState.QUEUED, TaskState.STARTED, TaskState.SUCCEEDED]


def test_a_watch_over_the_server_reports_every_change_of_the_task(
    schedules: Schedules, store: Store
) -> None:
    (task_id,) = put(schedules, [spec(key="watched")])
    server = Server(schedules, listen="127.0.0.1:0").start()
    try:
        with Client.connect(server.address) as client:
            changes = client.watch(ids=[task_id], timeout=10)
            advance(store, task_id)
            states = [record.state for record in itertools.islice(changes, 3)]
            changes.close()
    finally:
        server.stop(0)
    assert states == [TaskState.QUEUED, TaskState.STARTED, TaskState.SUCCEEDED]


def events_after(store: Store, cursor: str) -> list[StateChange]:
    """The changes after ``cursor``, read as the server's change feed reads them."""

    async def read() -> list[StateChange]:
        aio = AsyncStore(store)
        try:
            return await aio.events_after(cursor)
        finally:
            await aio.close()

    return asyncio.run(read())


def test_a_batch_is_one_event_per_hundred_tasks_and_each_task_a_change(
    schedules: Schedules, store: Store
) -> None:
    ids = put(schedules, [spec(n) for n in range(250)])
    per_partition = Counter(store.partition_of(task_id) for task_id in ids)
    entries = sum(store.redis.xlen(keys.events) for keys in store.parts)
    assert entries == sum(-(-n // 100) for n in per_partition.values())  # 100 + 100 + 50 in one
    changes = events_after(store, "0-0")
    assert {c.state for c in changes} == {TaskState.SCHEDULED}
    if store.partitions == 1:
        assert [c.task_id for c in changes] == ids
        # Resuming after an entry's cursor skips all of its tasks, and only those.
        after_first = events_after(store, changes[99].cursor)
        assert [c.task_id for c in after_first] == ids[100:]
    else:  # one read of every partition's stream; its cursor resumes after all of it
        assert sorted(c.task_id for c in changes) == sorted(ids)
        assert events_after(store, changes[-1].cursor) == []


def test_redeliver_makes_due_again_only_long_queued_unstarted_tasks(
    schedules: Schedules, store: Store
) -> None:
    lost, recent, started = put(schedules, [spec(0), spec(1), spec(2)])
    store.claim(window_seconds=3, lease_seconds=60, limit=5, now=T0 + timedelta(seconds=3))
    store.mark_queued([lost, started], now=T0)
    store.mark_queued([recent], now=T0 + timedelta(seconds=40))
    assert store.start(started, now=T0 + timedelta(seconds=2)) == "started"
    later = T0 + timedelta(seconds=61)
    assert store.redeliver(stale_seconds=60, now=later) == [lost]
    assert store.get(lost).state is TaskState.SCHEDULED
    assert store.get(recent).state is TaskState.QUEUED
    assert store.get(started).state is TaskState.STARTED
    # Due again: the next claim hands it off once more, under the same id.
    assert [c.id for c in store.claim(window_seconds=3, lease_seconds=60, limit=5, now=later)] == [
        lost
    ]
