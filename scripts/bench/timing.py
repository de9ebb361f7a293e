"""Hand-off and start lateness.

Hand-off: many tasks due within a span all reach the broker before their run time (queued
time < run time, read from each task's record). Lateness: tasks spread over a few seconds
with a worker that has capacity; start time minus run time, next to a plain Celery worker
given the same times as ETA messages.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from common import Report, Result, Sizes, percentile, wait_until
from parts import celery_worker, flush_celery_queue, schedkit_stack

from schedkit.model import TaskRecord, TaskSpec, TaskState


def _spread(count: int, lead: float, span: float) -> list[datetime]:
    now = datetime.now(UTC)
    return [now + timedelta(seconds=lead + span * i / max(count - 1, 1)) for i in range(count)]


def _run_until(
    stack: Any, client: Any, times: list[datetime], state: TaskState, timeout: float, what: str
) -> list[TaskRecord]:
    """Schedule one ``add`` per time, wait until all of them are in ``state``, return them."""
    specs = [TaskSpec("add", at, [i, 1]) for i, at in enumerate(times)]
    results = list(client.schedule_many(specs, batch_size=1000))
    errors = [r.error for r in results if r.error is not None]
    assert not errors, errors[:3]
    ids = [r.id for r in results]
    store = stack.store
    assert store is not None
    wait_until(lambda: store.count(state) == len(ids), timeout, what)
    return [r for r in store.get_many(ids) if r is not None]


def schedkit_handoff(report: Report, sizes: Sizes, url: str) -> None:
    """``handoff_tasks`` due within ``handoff_span``: how many reach the broker in time."""
    # No worker starts these: without a bound on what is handed off and not started, all
    # of them reach the broker (the measure is the dispatcher's, not back-pressure's).
    with schedkit_stack(url, max_in_flight=0) as stack, stack_client(stack) as client:
        # The first run time leaves room to store them all (seconds at this size) first.
        times = _spread(sizes.handoff_tasks, 2.0 + sizes.handoff_tasks / 2000, sizes.handoff_span)
        records = _run_until(
            stack, client, times, TaskState.QUEUED, sizes.handoff_span + 60, "every task handed off"
        )
        margins = [
            (r.spec.run_at - r.queued_at).total_seconds() * 1000
            for r in records
            if r.queued_at is not None
        ]
        in_time = sum(1 for m in margins if m >= 0)
    report.add(
        Result(
            "hand-off before run time", "schedkit dispatcher", "% of tasks",
            [100 * in_time / len(times)],
            note=f"{len(times):,} tasks due within {sizes.handoff_span:g}s; least margin "
            f"{min(margins):.0f} ms, median {percentile(margins, 50):.0f} ms",
            higher_is_better=True,
        )
    )  # fmt: skip
    flush_celery_queue(url)


def stack_client(stack: object) -> object:
    """A client of the stack's server (typed loosely: the bench is not type-checked)."""
    from schedkit.client.client import Client

    return Client.connect(stack.address)  # type: ignore[attr-defined]


def _lateness(report: Report, who: str, lateness_ms: list[float], sizes: Sizes) -> None:
    for q, name in ((50, "p50"), (99, "p99"), (100, "max")):
        report.add(
            Result(
                f"start lateness {name}", who, "ms", [percentile(lateness_ms, q)],
                note=f"{len(lateness_ms):,} tasks over {sizes.lateness_span:g}s",
            )
        )  # fmt: skip


def schedkit_lateness(report: Report, sizes: Sizes, url: str) -> None:
    """Start lateness of schedkit tasks, from the hook's start time in each record."""
    with schedkit_stack(url, worker=True) as stack, stack_client(stack) as client:
        times = _spread(sizes.lateness_tasks, 2.0, sizes.lateness_span)
        records = _run_until(
            stack, client, times, TaskState.SUCCEEDED, sizes.lateness_span + 60, "every task to run"
        )
        late = [
            (r.started_at - r.spec.run_at).total_seconds() * 1000
            for r in records
            if r.started_at is not None
        ]
    _lateness(report, "schedkit", late, sizes)
    flush_celery_queue(url)


def celery_lateness(report: Report, sizes: Sizes, url: str) -> None:
    """Start lateness of apply_async(eta=...) on a plain Celery worker."""
    from fixtures import LATENESS_KEY, schedule_celery_task

    client = redis.Redis.from_url(url)
    client.delete(LATENESS_KEY)
    with celery_worker(url):
        times = _spread(sizes.lateness_tasks, 2.0, sizes.lateness_span)
        for at in times:
            schedule_celery_task.apply_async(args=["plant"], eta=at)
        wait_until(
            lambda: client.llen(LATENESS_KEY) >= len(times),
            sizes.lateness_span + 60,
            "every Celery task to run",
        )
        late = [float(v) * 1000 for v in client.lrange(LATENESS_KEY, 0, -1)]
    _lateness(report, "plain Celery worker, ETA", late, sizes)
    client.delete(LATENESS_KEY)
    client.close()
    flush_celery_queue(url)
    time.sleep(0)  # nothing to wait for: the worker was killed and reaped above
