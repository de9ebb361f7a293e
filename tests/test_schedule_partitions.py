"""Recurring schedules in a store of four partitions, on a real Redis with the clock in the
test's hands: each schedule and its runs live in the partition the schedule's id hashes to,
the materializer and the overlap guard work there, and listing merges the partitions."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from conftest import Clock
from schedkit.demo import app as demo_app
from schedkit.dispatch import overlap
from schedkit.dispatch.materialize import Materializer
from schedkit.dispatch.registry import TaskRegistry
from schedkit.model import EPOCH, TaskSpec, TaskState, task_id_for
from schedkit.recurrence import Recurrence
from schedkit.recurring import SCHEDULE_LABEL, Overlap, ScheduleDef, run_key
from schedkit.service.recurring import Recurring
from schedkit.service.schedules import Schedules
from schedkit.settings import Settings
from schedkit.store.keys import partition_of, run_id_for
from schedkit.store.query import TaskQuery
from schedkit.store.store import Store

PARTS = 4
T0 = datetime(2030, 1, 7, 12, 0, tzinfo=UTC)


@pytest.fixture
def parted(redis_url: str) -> Iterator[Store]:
    opened = Store.from_url(redis_url, partitions=PARTS)
    yield opened
    opened.close()


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def recurring(parted: Store, settings: Settings, clock: Clock) -> Recurring:
    return Recurring(Schedules(parted, TaskRegistry(demo_app), settings, clock=clock))


def every(step: timedelta, **options: object) -> ScheduleDef:
    return ScheduleDef(
        recurrence=Recurrence(every=step, start=EPOCH),
        action=TaskSpec("add", EPOCH, [1, 2]),
        **options,  # type: ignore[arg-type]
    )


def ids_in(partition: int, count: int, stem: str = "s") -> list[str]:
    """``count`` schedule ids that hash to ``partition``."""
    found = [f"{stem}{n}" for n in range(1000) if partition_of(f"{stem}{n}", PARTS) == partition]
    return found[:count]


def runs_of(store: Store, schedule_id: str) -> list[str]:
    query = TaskQuery(labels=((SCHEDULE_LABEL, schedule_id),))
    records, _ = store.page(query, page_size=1000)
    return [r.id for r in records]


def test_a_run_id_hashes_to_its_schedules_partition_and_is_the_keys_own_with_one() -> None:
    keys = [run_key(f"s{n}", T0 + timedelta(minutes=n)) for n in range(50)]
    for key in keys:
        assert run_id_for(key, 0, 1) == task_id_for(key)  # ids from before partitions stay
        for partition in range(PARTS):
            made = run_id_for(key, partition, PARTS)
            assert partition_of(made, PARTS) == partition
            assert run_id_for(key, partition, PARTS) == made  # made again: the same id
    # The key's own id wherever it already hashes to the schedule's partition.
    own = [key for key in keys if partition_of(task_id_for(key), PARTS) == 2]
    assert own
    assert all(run_id_for(key, 2, PARTS) == task_id_for(key) for key in own)


def test_schedules_spread_over_partitions_and_their_runs_live_with_them(
    recurring: Recurring, parted: Store, settings: Settings, clock: Clock
) -> None:
    ids = [f"tick-{n:02d}" for n in range(12)]
    for schedule_id in ids:
        recurring.create(schedule_id, every(timedelta(minutes=1)))
    homes = {schedule_id: parted.partition_of(schedule_id) for schedule_id in ids}
    assert len(set(homes.values())) > 1
    made = Materializer(parted, settings, clock=clock).run_once()
    assert made > 0
    client = parted.redis
    for schedule_id, home in homes.items():
        keys = parted.parts[home]
        assert client.exists(keys.schedule(schedule_id)) == 1
        assert client.zscore(keys.schedules, schedule_id) is not None
        assert client.zscore(keys.schedules_due, schedule_id) is not None
        runs = runs_of(parted, schedule_id)
        assert runs
        assert sorted(runs) == sorted(recurring.store.parked_runs(schedule_id))
        for run in runs:
            assert client.exists(keys.task(run)) == 1
            assert client.zscore(keys.state("SCHEDULED"), run) is not None
        for other in set(range(PARTS)) - {home}:
            elsewhere = parted.parts[other]
            assert client.exists(elsewhere.schedule(schedule_id)) == 0
            assert client.exists(elsewhere.schedule_runs(schedule_id)) == 0
            assert not any(client.exists(elsewhere.task(run)) for run in runs)
    # The same nominal times made again (a backfill over them): the same ids, nothing new.
    before = {schedule_id: sorted(runs_of(parted, schedule_id)) for schedule_id in ids}
    end = T0 + timedelta(seconds=settings.schedule_lookahead)
    for schedule_id in ids:
        again = recurring.backfill(schedule_id, T0, end)
        assert (again.created, again.existing) == (0, len(before[schedule_id]))
    assert {schedule_id: sorted(runs_of(parted, schedule_id)) for schedule_id in ids} == before


def test_listing_merges_the_partitions_by_id_and_counts_them_all(
    recurring: Recurring, parted: Store
) -> None:
    ids = sorted(f"list-{n:02d}" for n in range(15))
    for schedule_id in ids:
        recurring.create(schedule_id, every(timedelta(hours=1)))
    assert len({parted.partition_of(i) for i in ids}) == PARTS
    for size in (1, 4, 100):
        listed, token = [], ""
        while True:
            page, token = recurring.page({}, page_size=size, page_token=token)
            listed += [record.id for record in page]
            if not token:
                break
        assert listed == ids
    assert recurring.store.count() == len(ids)


def test_the_schedule_bound_counts_every_partition(
    parted: Store, settings: Settings, clock: Clock
) -> None:
    small = Settings(**{**settings.__dict__, "max_schedules": 3})
    bounded = Recurring(Schedules(parted, TaskRegistry(demo_app), small, clock=clock))
    # Three in three partitions, then one in a fourth: the store's bound, not a partition's.
    ids = [ids_in(partition, 1)[0] for partition in range(PARTS)]
    for schedule_id in ids[:3]:
        bounded.create(schedule_id, every(timedelta(hours=1)))
    with pytest.raises(Exception, match="at most 3 schedules"):
        bounded.create(ids[3], every(timedelta(hours=1)))
    assert bounded.store.count() == 3


def _queued_runs(
    recurring: Recurring, parted: Store, clock: Clock, schedule_id: str, count: int
) -> list[str]:
    """``count`` runs of the schedule triggered a second apart, handed off (QUEUED)."""
    ids = []
    for _ in range(count):
        ids.append(recurring.trigger(schedule_id).id)
        clock.now += timedelta(seconds=1)
    claimed = parted.claim(window_seconds=5, lease_seconds=30, limit=100, now=clock.now)
    assert sorted(c.id for c in claimed) == sorted(ids)
    parted.mark_queued(ids, now=clock.now)
    return ids


@pytest.mark.parametrize("partition", [1, 3])
def test_the_overlap_guard_skips_a_run_of_a_schedule_in_a_later_partition(
    recurring: Recurring, parted: Store, clock: Clock, partition: int
) -> None:
    schedule_id = ids_in(partition, 1, "skip-")[0]
    recurring.create(schedule_id, every(timedelta(days=1), overlap=Overlap.SKIP))
    first, second = _queued_runs(recurring, parted, clock, schedule_id, 2)
    assert {parted.partition_of(first), parted.partition_of(second)} == {partition}
    assert overlap.start(parted, None, first) == "started"
    assert overlap.start(parted, None, second) == "overlap:skipped"
    assert parted.get(second).state is TaskState.CANCELLED
    keys = parted.parts[partition]
    assert parted.redis.smembers(keys.schedule_running(schedule_id)) == {first}
    assert parted.redis.exists(parted.keys.schedule_running(schedule_id)) == 0
    # The first ends: the next run starts.
    assert parted.finish(first, TaskState.SUCCEEDED)
    (third,) = _queued_runs(recurring, parted, clock, schedule_id, 1)
    assert overlap.start(parted, None, third) == "started"


def test_the_overlap_guard_buffers_a_run_of_a_schedule_in_a_later_partition(
    recurring: Recurring, parted: Store, clock: Clock
) -> None:
    # buffer_one is read from the schedule's own hash: found only in its partition (the
    # guard's default without one is skip).
    schedule_id = ids_in(2, 1, "buffer-")[0]
    recurring.create(schedule_id, every(timedelta(days=1), overlap=Overlap.BUFFER_ONE))
    first, second, third = _queued_runs(recurring, parted, clock, schedule_id, 3)
    assert overlap.start(parted, None, first) == "started"
    assert overlap.start(parted, None, second) == "overlap:buffered"
    assert overlap.start(parted, None, third) == "overlap:skipped"  # one waits already
    assert parted.get(second).state is TaskState.SCHEDULED
    assert parted.get(third).state is TaskState.CANCELLED
    running = parted.parts[2].schedule_running(schedule_id)
    assert parted.redis.smembers(running) == {first, f"b:{second}"}
    # The first ends, the buffered one is handed off again and starts.
    assert parted.finish(first, TaskState.SUCCEEDED)
    clock.now += timedelta(minutes=1)
    claimed = parted.claim(window_seconds=5, lease_seconds=30, limit=100, now=clock.now)
    assert [c.id for c in claimed] == [second]
    parted.mark_queued([second], now=clock.now)
    assert overlap.start(parted, None, second) == "started"
