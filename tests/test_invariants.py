"""The design's invariants under restarts, races and crashes, each on a stack of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from conftest import schedule_ids
from schedkit.client.client import Client
from schedkit.demo import app as demo_app
from schedkit.demo import runs
from schedkit.dispatch.dispatcher import Dispatcher
from schedkit.dispatch.publish import Outcome, Publisher
from schedkit.dispatch.registry import TaskRegistry
from schedkit.model import TaskSpec, TaskState
from schedkit.service.schedules import Schedules
from schedkit.settings import Settings
from schedkit.store.claimed import Claimed
from schedkit.store.store import Store
from schedkit.testing import LocalStack, local_stack

FINAL = ["SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED"]
FAST: dict[str, Any] = {"handoff_window": 3.0, "poll_interval": 0.2, "claim_lease": 2.0}


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[LocalStack]:
    with local_stack(data_dir=tmp_path / "data", **FAST) as running:
        yield running


def wait_all(client: Client, ids: list[str], timeout: float = 60) -> dict[str, TaskState]:
    return {i: client.wait_for(i, FINAL, timeout=timeout).state for i in ids}


@pytest.fixture
def publishes(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count every task message the broker took from this process's dispatchers, by id."""
    counts: Counter[str] = Counter()
    real = Publisher.publish

    def counted(self: Publisher, tasks: Sequence[Claimed], refusal: Any) -> Outcome:
        outcome = real(self, tasks, refusal)
        counts.update(
            t.id for t, reason in zip(tasks, outcome.reasons, strict=False) if reason is None
        )
        return outcome

    monkeypatch.setattr(Publisher, "publish", counted)
    return counts


def test_three_dispatchers_hand_each_task_off_once(
    own_stack: LocalStack, publishes: Counter[str]
) -> None:
    assert own_stack.store is not None
    assert own_stack.app is not None
    extra = [
        Dispatcher(own_stack.store, own_stack.app, own_stack.settings).start() for _ in range(2)
    ]
    try:
        soon = datetime.now(UTC) + timedelta(seconds=4)
        specs = [TaskSpec("add", soon + timedelta(milliseconds=5 * n), [n, 1]) for n in range(300)]
        with own_stack.client() as client:
            ids = [r.id for r in client.schedule_many(specs, batch_size=100)]
            states = wait_all(client, ids)
    finally:
        for dispatcher in extra:
            dispatcher.stop()
    assert set(states.values()) == {TaskState.SUCCEEDED}
    assert {i: publishes[i] for i in ids} == dict.fromkeys(ids, 1)
    assert own_stack.store is not None
    ran = Counter(r["id"] for r in runs(own_stack.store))
    assert {i: ran[i] for i in ids} == dict.fromkeys(ids, 1)


def test_a_dispatcher_killed_after_claiming_is_recovered(own_stack: LocalStack) -> None:
    """A real process claims due work and dies with SIGKILL before handing it off."""
    run_at = datetime.now(UTC) + timedelta(seconds=6)  # outside the stack's 3 s window
    specs = [TaskSpec("add", run_at + timedelta(milliseconds=n), [n, n]) for n in range(20)]
    with own_stack.client() as client:
        ids = [r.id for r in client.schedule_many(specs)]
        crashing = (
            "import os, sys\n"
            "from schedkit.store.store import Store\n"
            "claimed = Store.from_url(sys.argv[1]).claim("
            "window_seconds=30, lease_seconds=2, limit=100)\n"
            "print(len(claimed), flush=True)\n"
            "os.kill(os.getpid(), 9)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", crashing, own_stack.settings.store_url],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == -9
        assert done.stdout.strip() == "20"
        assert own_stack.store is not None
        assert own_stack.store.redis.zcard(own_stack.store.keys.claims) == 20
        states = wait_all(client, ids)
    assert set(states.values()) == {TaskState.SUCCEEDED}
    ran = Counter(r["id"] for r in runs(own_stack.store))
    assert {i: ran[i] for i in ids} == dict.fromkeys(ids, 1)


def test_everything_accepted_survives_a_restart_of_the_whole_stack(tmp_path: Path) -> None:
    data = tmp_path / "data"
    far = datetime.now(UTC) + timedelta(days=1)
    with local_stack(data_dir=data, **FAST) as first, first.client() as client:
        specs = [TaskSpec("water_plants", far + timedelta(minutes=n), [f"p{n}"]) for n in range(30)]
        ids = [r.id for r in client.schedule_many(specs)]
        soon = client.schedule("add", 1, 1, run_at=timedelta(seconds=5))
    # Stopped: server, dispatcher, worker and Redis (append-only file flushed on SIGTERM).
    with local_stack(data_dir=data, **FAST) as second, second.client() as client:
        listed = [t.id for t in client.tasks(states=["SCHEDULED"], task="water_plants")]
        assert listed == ids
        assert client.wait_for(soon.id, FINAL, timeout=30).state is TaskState.SUCCEEDED


def test_accepted_survives_redis_killed_with_fsync_always(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with local_stack(data_dir=data, worker=False, appendfsync="always", **FAST) as first:
        with first.client() as client:
            task = client.schedule("add", 2, 3, run_at=timedelta(days=2), key="crash-safe")
        assert first.redis is not None
        first.redis.kill()  # SIGKILL: no chance to flush anything after the reply
    with local_stack(data_dir=data, worker=False, **FAST) as second, second.client() as client:
        assert client.get(task.id).spec.key == "crash-safe"


def test_messages_handed_to_celery_are_json(redis_url: str, store: Store) -> None:
    settings = Settings(store_url=redis_url, **FAST)
    schedules = Schedules(store, TaskRegistry(demo_app), settings)
    schedule_ids(
        schedules, [TaskSpec("water_plants", datetime.now(UTC), ["fern"], {"litres": 2.5})]
    )
    isolated = Celery("json-check")  # publishes by name: no tasks registered here
    assert Dispatcher(store, isolated, settings).run_once() == 1
    broker = redis.Redis.from_url(settings.effective_broker_url)
    (raw,) = broker.lrange("celery", 0, -1)
    broker.close()
    message = json.loads(raw)
    assert message["content-type"] == "application/json"
    assert message["headers"]["task"] == "water_plants"
    body = json.loads(__import__("base64").b64decode(message["body"]))
    assert body[0] == ["fern"]
    assert body[1] == {"litres": 2.5}


def test_hand_off_that_the_broker_refuses_is_retried_later(store: Store, redis_url: str) -> None:
    settings = Settings(store_url=redis_url, broker_url="redis://127.0.0.1:1/0", **FAST)
    schedules = Schedules(store, TaskRegistry(demo_app), settings)
    (task_id,) = schedule_ids(schedules, [TaskSpec("add", datetime.now(UTC), [1, 2])])
    # Port 1 on loopback: nothing listens, so every publish is refused at once.
    dispatcher = Dispatcher(store, Celery("broken-broker"), settings)
    assert dispatcher.run_once() == 0
    assert store.get(task_id).state is TaskState.SCHEDULED
    assert store.redis.zscore(store.keys.state("SCHEDULED"), task_id) is not None
    assert store.redis.zcard(store.keys.claims) == 0


def test_a_hand_off_the_broker_lost_is_handed_off_again_and_runs_once(tmp_path: Path) -> None:
    # kombu's Redis transport can lose a message it accepted (the connection drops between a
    # worker's BRPOP and its unacked entry). Here the message is deleted from the broker.
    with local_stack(data_dir=tmp_path / "data", visibility_timeout=2.0, **FAST) as stack:
        assert stack.store is not None
        stack.stop_worker()
        with stack.client() as client:
            task = client.schedule("add", 20, 22, run_at=timedelta(0))
            client.wait_for(task.id, ["QUEUED"], timeout=30)
            broker = redis.Redis.from_url(stack.settings.effective_broker_url)
            assert broker.delete("celery") == 1  # the only copy of the message
            broker.close()
            stack.start_worker()
            done = client.wait_for(task.id, ["SUCCEEDED", "FAILED"], timeout=60)
        assert done.state is TaskState.SUCCEEDED
        assert [r["id"] for r in runs(stack.store)] == [task.id]
        assert stack.store.redis.hget(stack.store.keys.stats, "redelivered") == "1"
