"""The whole stack, real parts: embedded Redis, a Celery worker, dispatcher, gRPC server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schedkit.client.client import Client
from schedkit.demo import runs
from schedkit.errors import AlreadyExists
from schedkit.model import FINAL_STATES, Outcome, TaskSpec, TaskState
from schedkit.testing import LocalStack

FINAL = ["SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED"]


def runs_of(stack: LocalStack, task_id: str) -> list[dict[str, object]]:
    assert stack.store is not None
    return [r for r in runs(stack.store) if r["id"] == task_id]


def test_task_runs_at_its_time_and_records_its_result(
    stack: LocalStack, client: Client, record_property: pytest.RecordProperty
) -> None:
    run_at = datetime.now(UTC) + timedelta(seconds=2)
    task = client.schedule("water_plants", "fern", kwargs={"litres": 2}, run_at=run_at)
    assert task.state in (TaskState.SCHEDULED, TaskState.QUEUED)
    done = client.wait_for(task.id, FINAL, timeout=30)
    assert done.state is TaskState.SUCCEEDED
    assert done.result == '"watered fern with 2 l"'
    assert done.started_at is not None
    assert done.queued_at is not None
    assert done.queued_at < done.spec.run_at <= done.started_at
    lateness = (done.started_at - done.spec.run_at).total_seconds()
    record_property("start_lateness_seconds", lateness)
    print(f"start lateness: {lateness * 1000:.0f} ms")
    assert [r["plant"] for r in runs_of(stack, task.id)] == ["fern"]


def test_a_failing_task_records_error_and_traceback(client: Client) -> None:
    task = client.schedule("fail", "no water", run_at=timedelta(0))
    done = client.wait_for(task.id, FINAL, timeout=30)
    assert done.state is TaskState.FAILED
    assert done.error == "RuntimeError: no water"
    assert "raise RuntimeError(message)" in done.traceback


def test_a_retrying_task_passes_through_retrying(client: Client) -> None:
    task = client.schedule("flaky", 1, run_at=timedelta(0))
    done = client.wait_for(task.id, FINAL, timeout=30)
    assert done.state is TaskState.SUCCEEDED
    assert done.attempts == 2
    assert done.error == "RuntimeError: not yet"  # kept from the retry


def sentinel_after(client: Client, moment: datetime) -> None:
    """Run a task due after ``moment`` and wait for it: the worker has passed ``moment``."""
    marker = client.schedule("add", 0, 0, run_at=moment + timedelta(milliseconds=500))
    assert client.wait_for(marker.id, FINAL, timeout=30).state is TaskState.SUCCEEDED


def test_cancelled_before_hand_off_never_runs(stack: LocalStack, client: Client) -> None:
    task = client.schedule("water_plants", "cactus", run_at=timedelta(seconds=5))
    assert task.state is TaskState.SCHEDULED  # outside the 3 s window: parked
    assert client.cancel(task.id).state is TaskState.CANCELLED
    sentinel_after(client, task.spec.run_at)
    assert client.get(task.id).state is TaskState.CANCELLED
    assert runs_of(stack, task.id) == []


def test_cancelled_after_hand_off_is_refused_by_the_worker_hook(
    stack: LocalStack, client: Client
) -> None:
    """Cancel in the store only (no revoke): the hook alone must stop the run."""
    task = client.schedule("water_plants", "orchid", run_at=timedelta(seconds=1.5))
    queued = client.wait_for(task.id, ["QUEUED"], timeout=10)
    assert queued.state is TaskState.QUEUED
    assert stack.store is not None
    assert stack.store.cancel(task.id)[0] == "cancelled"
    sentinel_after(client, task.spec.run_at)
    assert client.get(task.id).state is TaskState.CANCELLED
    assert runs_of(stack, task.id) == []


def test_resending_a_key_creates_nothing(client: Client) -> None:
    run_at = datetime.now(UTC) + timedelta(hours=2)
    spec = TaskSpec("add", run_at, [1, 2], key="resend-me", labels={"test": "resend"})
    first = client.schedule_spec(spec)
    again = client.schedule_spec(spec)
    assert first.outcome is Outcome.CREATED
    assert again.outcome is Outcome.EXISTING
    assert again.task.id == first.task.id
    assert [t.id for t in client.tasks(labels={"test": "resend"})] == [first.task.id]
    with pytest.raises(AlreadyExists) as caught:
        client.schedule_spec(TaskSpec("add", run_at, [1, 3], key="resend-me"))
    assert caught.value.violations[0].field == "spec.idempotency_key"
    assert client.get(first.task.id).spec.args == [1, 2]


def test_a_far_future_task_stays_parked_and_the_worker_holds_nothing(
    stack: LocalStack, client: Client
) -> None:
    task = client.schedule("water_plants", "oak", run_at=timedelta(days=30))
    sentinel_after(client, datetime.now(UTC))  # a full dispatcher and worker cycle passes
    assert client.get(task.id).state is TaskState.SCHEDULED
    assert stack.broker is not None
    held = stack.broker.scheduled(timeout=2)
    held_ids = {entry["request"]["id"] for entries in held.values() for entry in entries}
    assert task.id not in held_ids
    assert stack.store is not None
    assert stack.store.redis.zscore(stack.store.keys.state("SCHEDULED"), task.id) is not None


def test_watch_sees_every_state_in_order(client: Client) -> None:
    watched: list[TaskState] = []
    changes = client.watch(task="add", timeout=30)
    task = client.schedule("add", 20, 22, run_at=timedelta(seconds=4))
    for change in changes:
        if change.id == task.id:
            watched.append(change.state)
            if change.state in FINAL_STATES:
                break
    changes.close()
    assert watched == [
        TaskState.SCHEDULED,
        TaskState.QUEUED,
        TaskState.STARTED,
        TaskState.SUCCEEDED,
    ]
    assert client.get(task.id).result == "42"


def test_list_filters_and_pages(client: Client) -> None:
    base = datetime.now(UTC) + timedelta(days=3)
    specs = [
        TaskSpec("add", base + timedelta(minutes=n), [n, 0], labels={"suite": "paging"})
        for n in range(25)
    ]
    ids = [r.id for r in client.schedule_many(specs, batch_size=10)]
    listed = list(client.tasks(labels={"suite": "paging"}, page_size=7))
    assert [t.id for t in listed] == ids
    page, token = client.tasks_page(labels={"suite": "paging"}, page_size=10)
    assert len(page) == 10
    assert token
    in_range = client.tasks(
        labels={"suite": "paging"},
        run_after=base + timedelta(minutes=5),
        run_before=base + timedelta(minutes=8),
    )
    assert [t.id for t in in_range] == ids[5:8]


def test_expired_task_is_skipped(client: Client) -> None:
    task = client.schedule(
        "water_plants", "moss", run_at=timedelta(seconds=-30), expires_after=timedelta(seconds=10)
    )
    done = client.wait_for(task.id, FINAL, timeout=30)
    assert done.state is TaskState.EXPIRED
