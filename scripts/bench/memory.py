"""Worker memory: a schedkit worker with many parked tasks against an idle one, next to a
plain Celery worker given ETA messages (it holds every one of them in memory)."""

from __future__ import annotations

import time

import redis
from common import Report, Result, Sizes, rss_bytes, wait_until
from parts import celery_worker, flush_celery_queue, schedkit_stack

from schedkit.model import TaskSpec, TaskState


def settled_rss(pid: int) -> int:
    """RSS once the worker has finished starting (two equal readings a second apart)."""
    last = -1
    for _ in range(30):
        now = rss_bytes(pid)
        if abs(now - last) < 256 * 1024:
            return now
        last = now
        time.sleep(1.0)  # settling is a trend over time, not an event to wait on
    return last


def schedkit_worker_memory(report: Report, sizes: Sizes, url: str) -> None:
    """The worker's RSS idle, then with ``eta_tasks`` tasks parked (the worker never sees
    them: the growth is what parked work costs a worker)."""
    from schedkit.client.client import Client

    with schedkit_stack(url, worker=True) as stack:
        assert stack.worker is not None
        assert stack.store is not None
        idle = settled_rss(stack.worker.pid)
        start = time.time() + 30 * 86400
        specs = [
            TaskSpec("water_plants", _at(start + i), [f"plant-{i % 1000}"])
            for i in range(sizes.eta_tasks)
        ]
        with Client.connect(stack.address) as client:
            for _ in client.schedule_many(specs):
                pass
        store = stack.store
        wait_until(lambda: store.count(TaskState.SCHEDULED) == len(specs), 60, "parking")
        loaded = settled_rss(stack.worker.pid)
    report.add(
        Result(
            "worker RSS growth", "schedkit worker", "MB", [(loaded - idle) / 2**20],
            note=f"{sizes.eta_tasks:,} parked tasks; idle {idle / 2**20:.0f} MB",
        )
    )  # fmt: skip


def _at(epoch: float):  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC)


def celery_worker_memory(report: Report, sizes: Sizes, url: str) -> None:
    """A plain Celery worker's RSS idle, then holding ``eta_tasks`` ETA messages; also how
    long ``inspect().scheduled()`` (the only way to list them) takes."""
    from fixtures import celery, schedule_celery_task

    client = redis.Redis.from_url(url)
    flush_celery_queue(url)
    with celery_worker(url) as worker:
        idle = settled_rss(worker.pid)
        start = time.time() + 30 * 86400
        for i in range(sizes.eta_tasks):
            schedule_celery_task.apply_async(args=[f"plant-{i % 1000}"], eta=_at(start + i))
        wait_until(
            lambda: client.hlen("unacked") >= sizes.eta_tasks,
            60 + sizes.eta_tasks / 200,
            "the worker to take every ETA message",
        )
        loaded = settled_rss(worker.pid)
        started = time.perf_counter()
        held = celery.control.inspect(timeout=10, limit=1).scheduled() or {}
        inspect_ms = (time.perf_counter() - started) * 1000
        count = sum(len(v) for v in held.values())
    growth = loaded - idle
    report.add(
        Result(
            "worker RSS growth", "plain Celery worker, ETA", "MB", [growth / 2**20],
            note=f"{sizes.eta_tasks:,} ETA tasks ({growth / sizes.eta_tasks / 1024:.1f} KB "
            f"each); idle {idle / 2**20:.0f} MB",
        )
    )  # fmt: skip
    report.add(
        Result(
            "query: first page (100)", "Celery inspect().scheduled()", "ms", [inspect_ms],
            note=f"lists all {count:,} held ETA tasks at once, from live workers only",
        )
    )  # fmt: skip
    flush_celery_queue(url)
    client.close()
