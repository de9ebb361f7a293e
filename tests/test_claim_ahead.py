"""The dispatcher's loop claims its next round while it publishes this one (Store.claim_later):
the same tasks in the same order as a claim, confirmed before use, given back when no round
comes to hand them off."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery import Celery

from conftest import FAST, schedule_ids
from schedkit.demo import app as demo_app
from schedkit.dispatch.dispatcher import Dispatcher
from schedkit.dispatch.publish import Outcome
from schedkit.dispatch.registry import TaskRegistry
from schedkit.model import TaskSpec, TaskState
from schedkit.service.schedules import Schedules
from schedkit.settings import Settings
from schedkit.store.claimed import CLAIM_SLICE
from schedkit.store.keys import partition_of
from schedkit.store.store import Store
from schedkit.testing import redis_server

PARTS = 4


def evalsha_calls(store: Store) -> int:
    stats = store.redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def test_a_claim_sent_ahead_takes_a_claims_tasks_in_run_time_order_then_priority(
    schedules: Schedules, store: Store
) -> None:
    now = datetime.now(UTC)
    base = now - timedelta(seconds=1)
    steps = list(range(2 * CLAIM_SLICE))
    random.Random(3).shuffle(steps)
    specs = [
        TaskSpec("add", base + timedelta(milliseconds=step), [step, priority], priority=priority)
        for step in steps
        for priority in (9, 0)
    ]
    ids = schedule_ids(schedules, specs)
    rank = {i: (spec.run_at, spec.priority or 0) for i, spec in zip(ids, specs, strict=True)}
    limit = 3 * CLAIM_SLICE + 10
    earlier = now - timedelta(hours=1)  # nothing due yet: loads the script, claims nothing
    assert store.claim(window_seconds=1, lease_seconds=30, limit=1, now=earlier) == []
    before = evalsha_calls(store)
    answered = store.claim_later(window_seconds=1, lease_seconds=30, limit=limit, now=now)
    claimed = answered()
    assert evalsha_calls(store) - before == 4  # three slices and 10, sent together
    assert [c.id for c in claimed] == sorted(ids, key=rank.__getitem__)[:limit]
    assert store.redis.zcard(store.keys.claims) == limit
    assert claimed[0].args == [0, 0]  # the earliest step, priority 0 first


def test_a_claim_sent_ahead_claims_when_redis_lost_its_scripts(
    schedules: Schedules, store: Store
) -> None:
    now = datetime.now(UTC)
    ids = schedule_ids(schedules, [TaskSpec("add", now, [n, 0]) for n in range(CLAIM_SLICE + 5)])
    store.redis.script_flush()  # a restarted Redis: EVALSHA answers NOSCRIPT
    answered = store.claim_later(window_seconds=1, lease_seconds=30, limit=1000, now=now)
    assert sorted(c.id for c in answered()) == sorted(ids)
    assert store.redis.zcard(store.keys.claims) == len(ids)


@pytest.fixture
def parted() -> Iterator[tuple[Store, Schedules]]:
    with redis_server(appendonly=False) as server:
        settings = Settings(store_url=server.url, store_partitions=PARTS, **FAST)  # type: ignore[arg-type]
        store = Store.for_settings(settings)
        yield store, Schedules(store, TaskRegistry(demo_app), settings)
        store.close()


def test_over_partitions_a_short_partition_leaves_its_share_to_the_others(
    parted: tuple[Store, Schedules],
) -> None:
    """Each partition's slices are sent at once; one that comes up short leaves the rest
    of the limit to those that did not, as a claim does."""
    store, schedules = parted
    now = datetime.now(UTC)
    ids = schedule_ids(schedules, [TaskSpec("add", now, [n, 0]) for n in range(3 * CLAIM_SLICE)])
    limit = 2 * CLAIM_SLICE + 50  # sent as 100, 100, 50: the first two run short (~75)
    claimed = store.claim_later(window_seconds=1, lease_seconds=30, limit=limit, now=now)()
    assert len(claimed) == limit
    assert [c.run_at for c in claimed] == sorted(c.run_at for c in claimed)
    for c in claimed:
        assert c.partition == partition_of(c.id, PARTS)
    assert sum(store.redis.zcard(k.claims) for k in store.parts) == limit
    rest = store.claim_later(window_seconds=1, lease_seconds=30, limit=1000, now=now)()
    assert sorted(c.id for c in [*claimed, *rest]) == sorted(ids)


def failing_broker(dispatcher: Dispatcher) -> None:
    """From now on the broker refuses every batch as a whole."""

    def publish(tasks: Any, refusal: Any) -> Outcome:
        return Outcome(error=ConnectionError("broker away"))

    dispatcher.publisher.publish = publish  # type: ignore[method-assign]


def test_the_loop_claims_the_next_round_ahead_and_gives_it_back_when_the_broker_fails(
    schedules: Schedules, store: Store, redis_url: str
) -> None:
    settings = Settings(store_url=redis_url, claim_batch=10, max_in_flight=0, **FAST)  # type: ignore[arg-type]
    ids = schedule_ids(schedules, [TaskSpec("add", datetime.now(UTC), [n, 0]) for n in range(25)])
    dispatcher = Dispatcher(store, Celery("ahead-check"), settings)
    assert dispatcher.run_once(overlap=True) == 10
    # The round's 10 held for their QUEUED marks, the next 10 claimed while it published.
    assert store.redis.zcard(store.keys.claims) == 20
    failing_broker(dispatcher)
    assert dispatcher.run_once(overlap=True) == 0  # the round claimed ahead: released
    dispatcher.settle_held()  # the loop's step after a round that was not full
    assert store.redis.zcard(store.keys.claims) == 0
    assert store.count(TaskState.QUEUED) == 10
    assert store.count(TaskState.SCHEDULED) == 15
    assert {store.get(i).state for i in ids} == {TaskState.QUEUED, TaskState.SCHEDULED}


def test_a_direct_round_hands_off_and_settles_what_was_claimed_ahead(
    schedules: Schedules, store: Store, redis_url: str
) -> None:
    settings = Settings(store_url=redis_url, claim_batch=10, max_in_flight=0, **FAST)  # type: ignore[arg-type]
    schedule_ids(schedules, [TaskSpec("add", datetime.now(UTC), [n, 0]) for n in range(25)])
    dispatcher = Dispatcher(store, Celery("ahead-direct"), settings)
    assert dispatcher.run_once(overlap=True) == 10
    assert dispatcher.run_once() == 10  # takes the claim made ahead, claims none ahead
    assert store.redis.zcard(store.keys.claims) == 0
    assert store.count(TaskState.QUEUED) == 20
    assert store.count(TaskState.SCHEDULED) == 5


def test_a_failed_round_gives_back_the_claim_taken_ahead_before_it_waits(
    schedules: Schedules, store: Store, redis_url: str
) -> None:
    """Kept through the loop's back-off, a claim taken ahead could outlive its lease and be
    handed off while another dispatcher has taken it: the failed round releases it first."""
    settings = Settings(store_url=redis_url, claim_batch=10, max_in_flight=0, **FAST)  # type: ignore[arg-type]
    schedule_ids(schedules, [TaskSpec("add", datetime.now(UTC), [n, 0]) for n in range(35)])
    dispatcher = Dispatcher(store, Celery("ahead-failed"), settings)
    assert dispatcher.run_once(overlap=True) == 10

    def broken(claimed: Any, *, overlap: bool) -> int:
        dispatcher._stop.set()  # one failed round, then the loop ends
        raise RuntimeError("a bad round")

    seen: dict[str, Any] = {}
    real_wait = dispatcher._stop.wait

    def wait(seconds: float | None = None) -> bool:
        seen["claims"] = store.redis.zcard(store.keys.claims)
        seen["ahead"] = dispatcher._ahead
        return real_wait(0)

    dispatcher._hand_off = broken  # type: ignore[method-assign]
    dispatcher._stop.wait = wait  # type: ignore[method-assign]
    dispatcher.run()
    # The failed round's own 10 stay claimed (their lease lapses); the next 10, claimed
    # ahead, were released before the back-off.
    assert seen == {"claims": 10, "ahead": None}
    assert store.count(TaskState.QUEUED) == 10  # the first round, settled during the second
    assert store.count(TaskState.SCHEDULED) == 15  # in the due index: all but those 20
