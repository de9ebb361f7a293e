"""The core behaviours, written once, run over each kind of store (one Redis is the rest of
the suite; tests/test_sentinel.py and tests/test_cluster.py run these over Sentinel and a
Redis Cluster)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from conftest import poll
from schedkit.errors import Unavailable
from schedkit.model import TaskState
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
