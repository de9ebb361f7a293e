"""The core behaviours, written once, run over each kind of store (one Redis is the rest of
the suite; tests/test_sentinel.py and tests/test_cluster.py run these over Sentinel and a
Redis Cluster)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from conftest import poll
from schedkit.demo import runs
from schedkit.errors import Unavailable
from schedkit.model import TaskSpec, TaskState
from schedkit.store.store import Store
from schedkit.testing import LocalStack

T = TypeVar("T")


def retried_call(call: Callable[[], T], tries: list[int], patience: float = 90) -> T:
    """``call()``, tried again after UNAVAILABLE as a caller would (0.1 s apart, up to
    ``patience`` seconds); each retry is counted in ``tries``."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return call()
        except Unavailable:
            tries.append(1)
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # a caller's pause before retrying, not a wait for a state


def schedule_idempotency_list_and_cancel(stack: LocalStack) -> None:
    """Seven tasks listed in pages of three and by run time, one key sent twice, one cancel."""
    label = {"run": uuid.uuid4().hex[:8]}
    at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    with stack.client() as client:
        run = label["run"]
        ids = [
            client.schedule(
                "add", n, n, run_at=at + timedelta(minutes=n), key=f"{run}-{n}", labels=label
            ).id
            for n in range(7)
        ]
        again = client.schedule("add", 0, 0, run_at=at, key=f"{run}-0", labels=label)
        assert again.id == ids[0]
        listed = list(client.tasks(labels=label, page_size=3))  # three pages
        assert [task.id for task in listed] == ids
        later = client.tasks(labels=label, run_after=at + timedelta(minutes=5))
        assert [task.id for task in later] == ids[5:]
        assert client.cancel(ids[3]).state == TaskState.CANCELLED
        assert [t.id for t in client.tasks(labels=label, states=["CANCELLED"])] == [ids[3]]


def watch_hand_off_and_run_once(stack: LocalStack) -> None:
    """A watcher sees a task go to SUCCEEDED; a second start of it is refused."""
    label = {"run": uuid.uuid4().hex[:8]}
    seen: list[TaskState] = []
    done = threading.Event()
    with stack.client() as client, stack.client() as watcher:
        changes = watcher.watch(labels=label, timeout=60)

        def follow() -> None:
            for task in changes:
                seen.append(task.state)
                if task.state == TaskState.SUCCEEDED:
                    done.set()
                    return

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        task = client.schedule("add", 2, 3, run_at=timedelta(seconds=1), labels=label)
        finished = client.wait_for(task.id, ["SUCCEEDED", "FAILED"], timeout=60)
        assert finished.state == TaskState.SUCCEEDED
        assert done.wait(30), seen
        changes.close()
        reader.join(10)
    assert TaskState.QUEUED in seen
    assert stack.store is not None
    assert stack.store.start(task.id).startswith("duplicate")


def a_schedule_is_materialized_and_its_runs_run(stack: LocalStack) -> None:
    """A server-side schedule every second: the dispatcher makes its runs (a pipelined
    script per schedule) and the worker runs them."""
    schedule_id = f"every-second-{uuid.uuid4().hex[:8]}"
    with stack.client() as client:
        client.create_schedule(schedule_id, "add", args=[1, 2], every=timedelta(seconds=1))
        runs = {"schedkit.schedule": schedule_id}
        poll(
            lambda: bool(list(client.tasks(labels=runs, states=["SUCCEEDED"]))),
            60,
            "a run of the schedule to succeed",
        )
        client.delete_schedule(schedule_id)


def schedules_of_every_partition_run_in_their_partitions(stack: LocalStack) -> None:
    """One every-second schedule per store partition (ids picked to land in each): each is
    materialized and run, each run's record lives in its schedule's partition, and
    ListSchedules pages over the partitions in id order."""
    store = stack.store
    assert store is not None
    tag = uuid.uuid4().hex[:8]
    picked: dict[int, str] = {}
    for n in range(10_000):
        candidate = f"spread-{tag}-{n:04d}"
        picked.setdefault(store.partition_of(candidate), candidate)
        if len(picked) == store.partitions:
            break
    ids = sorted(picked.values())
    with stack.client() as client:
        try:
            for schedule_id in ids:
                client.create_schedule(
                    schedule_id,
                    "add",
                    args=[1, 2],
                    every=timedelta(seconds=1),
                    labels={"spread": tag},
                )
            listed = [s.id for s in client.schedules(labels={"spread": tag}, page_size=1)]
            assert listed == ids
            for home, schedule_id in picked.items():
                runs_of = {"schedkit.schedule": schedule_id}
                poll(
                    lambda runs_of=runs_of: bool(  # type: ignore[misc]
                        list(client.tasks(labels=runs_of, states=["SUCCEEDED"]))
                    ),
                    60,
                    f"a run of {schedule_id} (partition {home}) to succeed",
                )
                keys = store.parts[home]
                assert store.redis.exists(keys.schedule(schedule_id)) == 1
                for run in client.tasks(labels=runs_of):
                    assert store.partition_of(run.id) == home
                    assert store.redis.exists(keys.task(run.id)) == 1
        finally:
            for schedule_id in ids:
                client.delete_schedule(schedule_id)


def _holders(store: Store) -> dict[int, str]:
    """Which dispatcher holds each partition's lease ('' none)."""
    return {p: str(store.redis.get(store.parts[p].lease) or "") for p in range(store.partitions)}


def a_killed_dispatchers_partitions_are_taken_over(stack: LocalStack) -> None:
    """A second dispatcher (a real process) beside the stack's: the partitions split between
    them; SIGKILL it, the survivor holds every partition within a lease (and a look), and
    every task, those of the killed one's partitions too, is handed off and run once."""
    store = stack.store
    assert store is not None
    assert stack.dispatcher is not None
    parts, lease = store.partitions, stack.settings.claim_lease
    env = {
        **os.environ,
        "SCHEDKIT_STORE_URL": stack.settings.store_url,
        "SCHEDKIT_BROKER_URL": stack.settings.effective_broker_url,
        "SCHEDKIT_PREFIX": stack.settings.prefix,
        "SCHEDKIT_STORE_PARTITIONS": str(parts),
        "SCHEDKIT_CLAIM_LEASE": str(lease),
        "SCHEDKIT_HANDOFF_WINDOW": str(stack.settings.handoff_window),
        "SCHEDKIT_POLL_INTERVAL": "0.2",
    }
    other = subprocess.Popen(
        [sys.executable, "-m", "schedkit", "dispatch"], env=env, start_new_session=True
    )
    mine = stack.dispatcher.leases.owner
    try:
        poll(
            lambda: (
                sorted(Counter(_holders(store).values()).values())
                == [parts // 2, parts - parts // 2]
                and "" not in _holders(store).values()
            ),
            30,
            "two dispatchers sharing the partitions",
        )
        theirs = {p for p, h in _holders(store).items() if h != mine}
        with stack.client() as client:
            soon = datetime.now(UTC) + timedelta(seconds=2)
            ids = [
                r.id
                for r in client.schedule_many([TaskSpec("add", soon, [n, 1]) for n in range(60)])
            ]
            assert theirs & {store.partition_of(i) for i in ids}
            os.kill(other.pid, signal.SIGKILL)
            other.wait(10)
            poll(
                lambda: set(_holders(store).values()) == {mine},
                lease + 2,
                "the survivor to hold every partition within a lease",
            )
            states = {i: client.wait_for(i, ["SUCCEEDED", "FAILED"], timeout=60).state for i in ids}
    finally:
        if other.poll() is None:
            other.kill()
            other.wait(10)
    assert set(states.values()) == {TaskState.SUCCEEDED}
    ran = Counter(r["id"] for r in runs(store))
    assert {i: ran[i] for i in ids} == dict.fromkeys(ids, 1)
