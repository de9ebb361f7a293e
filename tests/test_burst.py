"""Bursts: many tasks due at one instant wait in the store, not in worker memory.

The dispatcher keeps each queue's tasks handed off (or claimed) and not yet started under
``max_in_flight``; the rest waits in the store and leaves it in run-time order, priority
breaking ties. Claims come in bounded script calls.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis

from conftest import FAST, poll, schedule_ids
from schedkit.client.client import Client
from schedkit.demo import runs
from schedkit.model import TaskRecord, TaskSpec, TaskState
from schedkit.service.schedules import Schedules
from schedkit.store.claimed import CLAIM_SLICE
from schedkit.store.store import Store
from schedkit.testing import LocalStack, local_stack

FINAL = ["SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED"]


def wait_all(client: Client, ids: list[str], timeout: float = 120) -> dict[str, TaskRecord]:
    """Every task's record once it reached a final state."""
    return {i: client.wait_for(i, FINAL, timeout=timeout) for i in ids}


class InFlight:
    """Samples, until stopped, how many tasks are claimed or QUEUED (handed off, not
    started): one MULTI per sample, so both counts are of one instant."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.most = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        keys = self.store.keys
        while not self._stop.is_set():
            pipe = self.store.redis.pipeline(transaction=True)
            pipe.zcard(keys.state("QUEUED"))
            pipe.zcard(keys.claims)
            queued, claimed = pipe.execute()
            self.most = max(self.most, int(queued) + int(claimed))
            self.samples += 1
            self._stop.wait(0.002)

    @classmethod
    @contextlib.contextmanager
    def watching(cls, store: Store) -> Iterator[InFlight]:
        """Sample while the block runs."""
        sampler = cls(store)
        sampler._thread.start()
        try:
            yield sampler
        finally:
            sampler._stop.set()
            sampler._thread.join(5)


def test_a_burst_larger_than_the_bound_never_has_more_than_the_bound_in_flight(
    tmp_path: Path,
) -> None:
    bound = 20
    with local_stack(data_dir=tmp_path / "data", max_in_flight=bound, **FAST) as stack:
        assert stack.store is not None
        at = datetime.now(UTC) + timedelta(seconds=2)
        specs = [TaskSpec("add", at, [n, 1]) for n in range(400)]
        with stack.client() as client, InFlight.watching(stack.store) as sampler:
            ids = [r.id for r in client.schedule_many(specs, batch_size=400)]
            done = wait_all(client, ids)
        assert {r.state for r in done.values()} == {TaskState.SUCCEEDED}
        assert sampler.samples > 10
        assert 0 < sampler.most <= bound
        # Every task that was in flight landed: the counts behind the bound are back to none.
        assert stack.store.redis.hgetall(stack.store.keys.flight) == {}
        assert Counter(str(r["id"]) for r in runs(stack.store)) == dict.fromkeys(ids, 1)


def started_in_order(stack: LocalStack, specs: list[TaskSpec]) -> list[int]:
    """Schedule ``specs`` in one call; the spec indexes in the order the worker started them."""
    with stack.client() as client:
        ids = [r.id for r in client.schedule_many(specs, batch_size=len(specs))]
        done = wait_all(client, ids)
    assert {r.state for r in done.values()} == {TaskState.SUCCEEDED}
    started = {i: r.started_at for i, r in done.items()}
    return sorted(range(len(ids)), key=lambda n: started[ids[n]] or datetime.max)


def test_a_burst_starts_in_run_time_order_then_priority(tmp_path: Path) -> None:
    # One task in flight and one worker process: the store's order is the start order.
    settings = {**FAST, "max_in_flight": 1, "worker_concurrency": 1}
    with local_stack(data_dir=tmp_path / "data", **settings) as stack:
        at = datetime.now(UTC) + timedelta(seconds=1)
        specs = []
        for step in (3, 0, 2, 1):  # run times given out of order
            for priority in (7, None, 2, 9):
                run_at = at + timedelta(milliseconds=step)
                specs.append(TaskSpec("add", run_at, [step, priority or 0], priority=priority))
        order = started_in_order(stack, specs)

    def rank(n: int) -> tuple[datetime, int]:
        return specs[n].run_at, specs[n].priority or 0

    assert order == sorted(range(len(specs)), key=rank)


def test_cancelled_tasks_inside_a_burst_never_run(tmp_path: Path) -> None:
    with local_stack(data_dir=tmp_path / "data", max_in_flight=5, **FAST) as stack:
        assert stack.store is not None
        at = datetime.now(UTC) + timedelta(seconds=1)
        specs = [TaskSpec("add", at, [n, 0]) for n in range(150)]
        with stack.client() as client:
            ids = [r.id for r in client.schedule_many(specs, batch_size=150)]
            # Every third task, across the burst: some already handed off, most still parked.
            cancelled = ids[::3]
            for task_id in cancelled:
                client.cancel(task_id)
            done = wait_all(client, ids)
        assert {done[i].state for i in cancelled} == {TaskState.CANCELLED}
        kept = [i for i in ids if i not in set(cancelled)]
        assert {done[i].state for i in kept} == {TaskState.SUCCEEDED}
        ran = Counter(str(r["id"]) for r in runs(stack.store))
        assert ran == dict.fromkeys(kept, 1)
        assert stack.store.redis.hgetall(stack.store.keys.flight) == {}


def test_a_burst_over_several_claim_calls_leaves_in_run_time_order_then_priority(
    schedules: Schedules, store: Store
) -> None:
    """Run-time order holds across the claim script's calls, not only within one; priority
    breaks ties among the tasks of one instant that one call reads (CLAIM_SLICE of them)."""
    now = datetime.now(UTC)
    base = now - timedelta(seconds=1)
    steps = list(range(CLAIM_SLICE + CLAIM_SLICE // 2))  # two tasks per step: three calls
    random.Random(14).shuffle(steps)
    specs = [
        TaskSpec("add", base + timedelta(milliseconds=step), [step, priority], priority=priority)
        for step in steps
        for priority in (9, 0)
    ]
    ids = schedule_ids(schedules, specs)
    claimed = store.claim(window_seconds=1, lease_seconds=30, limit=len(specs), now=now)
    rank = {i: (spec.run_at, spec.priority or 0) for i, spec in zip(ids, specs, strict=True)}
    assert [c.id for c in claimed] == sorted(ids, key=rank.__getitem__)


def evalsha_calls(store: Store) -> int:
    stats = store.redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def test_a_large_claim_is_taken_in_bounded_script_calls(schedules: Schedules, store: Store) -> None:
    now = datetime.now(UTC)
    schedule_ids(schedules, [TaskSpec("add", now, [n, 0]) for n in range(3 * CLAIM_SLICE + 50)])
    earlier = now - timedelta(hours=1)  # nothing due yet: loads the script, claims nothing
    assert store.claim(window_seconds=1, lease_seconds=30, limit=1, now=earlier) == []
    before = evalsha_calls(store)
    claimed = store.claim(window_seconds=1, lease_seconds=30, limit=2 * CLAIM_SLICE + 10, now=now)
    assert len(claimed) == 2 * CLAIM_SLICE + 10
    assert evalsha_calls(store) - before == 3  # a slice, a slice, then 10
    rest = store.claim(window_seconds=1, lease_seconds=30, limit=10_000, now=now)
    assert len(rest) == CLAIM_SLICE + 40


def test_the_bound_holds_back_what_has_no_room_and_start_and_cancel_make_room(
    schedules: Schedules, store: Store
) -> None:
    now = datetime.now(UTC)
    ids = schedule_ids(schedules, [TaskSpec("add", now, [n, 0]) for n in range(10)])
    first = store.claim(window_seconds=1, lease_seconds=30, limit=100, max_in_flight=4, now=now)
    assert [c.id for c in first] == sorted(ids)[:4]
    assert first.held_back == 6
    store.mark_queued([c.id for c in first[:3]], now=now)
    store.release([first[3].id], now=now)  # the broker did not take it: room again
    assert store.redis.hget(store.keys.flight, "") == "3"
    assert store.start(first[0].id, now=now) == "started"
    store.cancel(first[1].id, now=now)
    assert store.redis.hget(store.keys.flight, "") == "1"
    again = store.claim(window_seconds=1, lease_seconds=30, limit=100, max_in_flight=4, now=now)
    assert len(again) == 3
    assert again.held_back == 4
    assert store.redis.hget(store.keys.flight, "") == "4"


def test_the_hook_writes_finish_records_in_batches_off_the_task_path(
    schedules: Schedules, store: Store, redis_url: str
) -> None:
    from schedkit.dispatch.hook import StoreHandle
    from schedkit.settings import Settings

    now = datetime.now(UTC)
    ids = schedule_ids(schedules, [TaskSpec("add", now, [n, 0]) for n in range(50)])
    for task_id in ids:
        assert store.start(task_id) == "started"
    handle = StoreHandle(Settings(store_url=redis_url))
    assert not store.finish("no-such-task", TaskState.SUCCEEDED)  # loads the script
    before = evalsha_calls(store)
    for n, task_id in enumerate(ids):
        handle.recorder.add(task_id, TaskState.SUCCEEDED, str(n), "", "")
    # Written by the recorder's thread, without waiting for the tasks: poll for it.
    deadline = datetime.now(UTC) + timedelta(seconds=30)
    while store.count(TaskState.SUCCEEDED) < 50 and datetime.now(UTC) < deadline:
        store.wait_for_work(0.01)
    assert store.count(TaskState.SUCCEEDED) == 50
    assert [store.get(i).result for i in ids] == [str(n) for n in range(50)]
    assert evalsha_calls(store) - before == 50  # each record written once
    handle.recorder.flush()  # nothing left: a no-op


def test_cancelling_by_filter_and_skipping_an_overlapping_run_give_their_room_back(
    schedules: Schedules, store: Store
) -> None:
    """Every way out of 'in flight' lands the task: here CancelTasks' slices and the overlap
    guard's skip (a schedule's run refused at start while another run is going). A leak
    would shrink the queue's room for ever."""
    from schedkit.recurring import SCHEDULE_LABEL
    from schedkit.store.edits import EditStore
    from schedkit.store.schedules import ScheduleStore

    now = datetime.now(UTC)
    run = {SCHEDULE_LABEL: "nightly"}  # no schedule record: the guard's default is skip
    specs = [TaskSpec("add", now, [n, 0], labels=run) for n in range(2)]
    specs += [TaskSpec("add", now, [n, 1]) for n in range(3)]
    ids = schedule_ids(schedules, specs)
    claimed = store.claim(window_seconds=1, lease_seconds=30, limit=100, max_in_flight=10, now=now)
    store.mark_queued([c.id for c in claimed], now=now)
    assert store.redis.hget(store.keys.flight, "") == "5"
    guard = ScheduleStore(store)
    assert guard.start_run(ids[0], buffer_ms=1000, now=now) == "started"
    assert guard.start_run(ids[1], buffer_ms=1000, now=now) == "overlap:skipped"
    assert store.redis.hget(store.keys.flight, "") == "3"
    cancelled, handed = EditStore(store).cancel_many(ids[2:], now=now)
    assert (cancelled, sorted(handed)) == (3, sorted(ids[2:]))
    assert store.redis.hgetall(store.keys.flight) == {}


def test_a_worker_at_warning_writes_no_line_per_task(tmp_path: Path) -> None:
    # Three INFO lines per task (received, succeeded, the demo's) cost a worker in a burst;
    # --loglevel WARNING must silence them as it does on a plain Celery worker.
    log = tmp_path / "worker.log"
    settings = {**FAST, "worker_loglevel": "WARNING"}
    with local_stack(data_dir=tmp_path / "data", worker_log=str(log), **settings) as stack:
        at = datetime.now(UTC)
        with stack.client() as client:
            ids = [
                r.id for r in client.schedule_many([TaskSpec("add", at, [n, 1]) for n in range(5)])
            ]
            done = wait_all(client, ids)
    assert {r.state for r in done.values()} == {TaskState.SUCCEEDED}
    text = log.read_text()
    assert "celery@" in text or "schedkit@" in text  # the worker's banner: the log is its
    assert not [line for line in text.splitlines() if " INFO " in line]


def test_a_worker_without_ack_emulation_killed_holding_tasks_loses_none(tmp_path: Path) -> None:
    """SCHEDKIT_WORKER_ACK_EMULATION=0: the broker forgets a message once a worker takes it,
    so a worker killed while it holds tasks takes them with it; schedkit hands them off
    again (a visibility timeout after their run time) and each runs once."""
    settings = {**FAST, "visibility_timeout": 2.0, "worker_ack_emulation": False}
    with local_stack(data_dir=tmp_path / "data", **settings) as stack:
        assert stack.store is not None
        assert stack.worker is not None
        broker = redis.Redis.from_url(stack.settings.effective_broker_url)
        at = datetime.now(UTC) + timedelta(seconds=2.5)  # inside the window: handed off now
        with stack.client() as client:
            ids = [
                r.id for r in client.schedule_many([TaskSpec("add", at, [n, 1]) for n in range(20)])
            ]
            # The worker holds every message as an ETA task, none of them kept by the broker.
            poll(lambda: stack.store.count(TaskState.QUEUED) == 20, 30, "the hand-offs")
            poll(lambda: broker.llen("celery") == 0, 30, "the worker to take every message")
            assert broker.hlen("unacked") == 0
            os.killpg(stack.worker.pid, signal.SIGKILL)  # before their run time
            done = wait_all(client, ids)  # the stack's supervisor starts a new worker
        broker.close()
        assert {r.state for r in done.values()} == {TaskState.SUCCEEDED}
        assert Counter(str(r["id"]) for r in runs(stack.store)) == dict.fromkeys(ids, 1)
        assert stack.store.redis.hget(stack.store.keys.stats, "redelivered") == "20"


def test_the_loop_settles_a_full_round_while_the_next_is_built(
    schedules: Schedules, store: Store, redis_url: str
) -> None:
    """A full round's QUEUED marks wait for the next round's claim (they are sent after it
    and read once its messages are built), and the next round is claimed while it
    publishes; a round that is not full settles both."""
    from celery import Celery

    from schedkit.dispatch.dispatcher import Dispatcher
    from schedkit.settings import Settings

    settings = Settings(store_url=redis_url, claim_batch=10, max_in_flight=0, **FAST)
    ids = schedule_ids(schedules, [TaskSpec("add", datetime.now(UTC), [n, 0]) for n in range(25)])
    dispatcher = Dispatcher(store, Celery("overlap-check"), settings)
    queued = store.keys.state("QUEUED")
    assert dispatcher.run_once(overlap=True) == 10
    assert store.redis.zcard(queued) == 0  # held: still claimed, under their lease
    assert store.redis.zcard(store.keys.claims) == 20  # and the next round, claimed ahead
    assert dispatcher.run_once(overlap=True) == 10
    assert store.redis.zcard(queued) == 10  # the first round, settled during the second
    assert dispatcher.run_once(overlap=True) == 5  # not full: settled before it returns
    assert dispatcher.run_once(overlap=True) == 0  # nothing due: the held round goes out
    assert store.redis.zcard(queued) == 25
    assert store.redis.zcard(store.keys.claims) == 0
    assert {store.get(i).state for i in ids} == {TaskState.QUEUED}
    broker = redis.Redis.from_url(settings.effective_broker_url)
    assert broker.llen("celery") == 25
    broker.close()


def test_a_settle_sent_ahead_falls_back_when_redis_lost_its_scripts(
    schedules: Schedules, store: Store
) -> None:
    now = datetime.now(UTC)
    ids = schedule_ids(schedules, [TaskSpec("add", now, [n, 0]) for n in range(CLAIM_SLICE + 5)])
    claimed = store.claim(window_seconds=1, lease_seconds=30, limit=1000, now=now)
    store.redis.script_flush()  # a restarted Redis: EVALSHA answers NOSCRIPT
    answered = store.mark_queued_later([c.id for c in claimed], now=now)
    answered()
    assert store.count(TaskState.QUEUED) == len(ids)
    assert store.redis.zcard(store.keys.claims) == 0
    assert store.redis.hget(store.keys.stats, "handed") == str(len(ids))
