"""Ingest: a timetable through ``python -m schedkit.scheduler``, process start to all durable,
next to the seed design (one HTTP request per task), a bare apply_async(eta=...) loop and RQ's
enqueue_at. Also measured on the parked tasks it leaves: store bytes per task and the first
ListTasks page.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from common import PYTHON, Report, Result, Sizes, future, percentile, write_timetable
from memory import settled_rss
from parts import flush_celery_queue, schedkit_stack, seed_api

from schedkit.model import TaskState
from schedkit.runtime.stack import Stack


def schedkit_ingest(report: Report, sizes: Sizes, url: str, workdir: Path) -> None:
    """The scheduler CLI on ``sizes.rows`` rows, ``sizes.repeat`` times; the last run's
    parked tasks are then measured for memory and query."""
    timetable = write_timetable(workdir / "timetable.csv", sizes.rows, future())
    client = redis.Redis.from_url(url)
    rates: list[float] = []
    for run in range(sizes.repeat):
        client.flushdb()
        last = run == sizes.repeat - 1
        # The last run also has a worker, to show what parked tasks cost it (nothing).
        with schedkit_stack(url, worker=last) as stack:
            idle_rss = settled_rss(stack.worker.pid) if stack.worker else 0
            before = int(client.info("memory")["used_memory"])
            started = time.monotonic()
            done = subprocess.run(
                [PYTHON, "-m", "schedkit.scheduler", str(timetable), "-q",
                 "--server", stack.address],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            elapsed = time.monotonic() - started
            assert stack.store is not None
            parked = stack.store.count(TaskState.SCHEDULED)
            if done.returncode != 0 or parked != sizes.rows:
                raise RuntimeError(
                    f"scheduler exit {done.returncode}, {parked} of {sizes.rows} parked:\n"
                    f"{done.stdout}\n{done.stderr}"
                )
            rates.append(sizes.rows / elapsed)
            if last:
                parked_measures(report, sizes, stack, client, before)
                assert stack.worker is not None
                loaded_rss = settled_rss(stack.worker.pid)
                report.add(
                    Result(
                        "worker RSS growth", f"schedkit worker, {sizes.rows:,} parked", "MB",
                        [(loaded_rss - idle_rss) / 2**20],
                        note=f"RSS {idle_rss / 2**20:.0f} MB before the ingest, "
                        f"{loaded_rss / 2**20:.0f} MB after",
                    )
                )  # fmt: skip
    report.add(
        Result(
            "ingest", "schedkit scheduler CLI", "tasks/s", rates,
            note=f"{sizes.rows:,} rows, process start to all durable",
            higher_is_better=True,
        )
    )  # fmt: skip
    client.flushdb()
    client.close()


def parked_measures(
    report: Report, sizes: Sizes, stack: Stack, client: redis.Redis, before: int
) -> None:
    """Store bytes per parked task and the first ListTasks page, over the ingested tasks."""
    assert stack.store is not None
    # The event stream is bounded (SCHEDKIT_EVENT_HISTORY entries), not a cost per task.
    client.xtrim(stack.store.keys.events, maxlen=0)
    after = int(client.info("memory")["used_memory"])
    report.add(
        Result(
            "store memory", "schedkit (Redis)", "bytes/task", [(after - before) / sizes.rows],
            note=f"{sizes.rows:,} parked tasks",
        )
    )  # fmt: skip
    with Stack_client(stack) as api:
        timings = []
        for _ in range(sizes.query_calls):
            started = time.perf_counter()
            tasks, _token = api.tasks_page(page_size=100)
            timings.append((time.perf_counter() - started) * 1000)
            assert len(tasks) == 100
    report.add(
        Result(
            "query: first page (100)", "schedkit ListTasks", "ms",
            [percentile(timings, 50)],
            note=f"over {sizes.rows:,} parked tasks; p99 {percentile(timings, 99):.2f} ms",
        )
    )  # fmt: skip


def Stack_client(stack: Stack) -> Any:
    """A client of the stack's server."""
    from schedkit.client.client import Client

    return Client.connect(stack.address)


def baseline_rows(count: int) -> list[tuple[list[Any], datetime]]:
    """The same garden timetable as parsed rows: (args, eta)."""
    start = future()
    return [([f"plant-{i % 1000}", i % 7 + 1], start + timedelta(seconds=i)) for i in range(count)]


def timed_ingest(
    client: redis.Redis,
    rows: list[tuple[list[Any], datetime]],
    repeat: int,
    enqueue: Callable[[list[Any], datetime], object],
    check: Callable[[], None] | None = None,
) -> tuple[list[float], list[float]]:
    """Rates (tasks/s) and Redis bytes per task of ``repeat`` in-process loops over ``rows``,
    each on an emptied database; ``check`` runs after each loop, before memory is read."""
    rates, per_task = [], []
    for _ in range(repeat):
        client.flushdb()
        before = int(client.info("memory")["used_memory"])
        started = time.monotonic()
        for args, eta in rows:
            enqueue(args, eta)
        elapsed = time.monotonic() - started
        if check is not None:
            check()
        per_task.append((int(client.info("memory")["used_memory"]) - before) / len(rows))
        rates.append(len(rows) / elapsed)
    return rates, per_task


def bare_loop_ingest(report: Report, sizes: Sizes, url: str) -> None:
    """apply_async(eta=...) in a loop, in process (no HTTP): the best case of the seed."""
    from fixtures import schedule_celery_task

    client = redis.Redis.from_url(url)
    rows = baseline_rows(sizes.baseline_rows)

    def all_in_the_queue() -> None:
        assert client.llen("celery") == len(rows)

    rates, per_task = timed_ingest(
        client,
        rows,
        sizes.repeat,
        lambda args, eta: schedule_celery_task.apply_async(args=args, eta=eta),
        check=all_in_the_queue,
    )
    report.add(
        Result(
            "ingest", "bare apply_async(eta) loop", "tasks/s", rates,
            note=f"{len(rows):,} tasks, in process", higher_is_better=True,
        )
    )  # fmt: skip
    report.add(
        Result(
            "store memory", "Celery ETA message (Redis)", "bytes/task", per_task,
            note="in the broker until a worker takes it",
        )
    )  # fmt: skip
    flush_celery_queue(url)
    client.close()


def rq_ingest(report: Report, sizes: Sizes, url: str) -> None:
    """RQ's enqueue_at, what a Redis-queue user would pick; then its registry's first page."""
    from fixtures import rq_job
    from rq import Queue
    from rq.job import Job
    from rq.registry import ScheduledJobRegistry

    client = redis.Redis.from_url(url)
    rows = baseline_rows(sizes.baseline_rows)
    queue = Queue("bench", connection=client)
    rates, per_task = timed_ingest(
        client, rows, sizes.repeat, lambda args, eta: queue.enqueue_at(eta, rq_job, *args)
    )
    registry = ScheduledJobRegistry(queue=queue)
    timings = []
    for _ in range(sizes.query_calls):
        started = time.perf_counter()
        jobs = Job.fetch_many(registry.get_job_ids(0, 99), connection=client)
        timings.append((time.perf_counter() - started) * 1000)
        assert len(jobs) == min(100, len(rows))
    report.add(
        Result(
            "ingest", "RQ enqueue_at", "tasks/s", rates,
            note=f"{len(rows):,} tasks, in process", higher_is_better=True,
        )
    )  # fmt: skip
    report.add(Result("store memory", "RQ scheduled job (Redis)", "bytes/task", per_task))
    report.add(
        Result(
            "query: first page (100)", "RQ ScheduledJobRegistry", "ms",
            [percentile(timings, 50)],
            note=f"over {len(rows):,} jobs only; p99 {percentile(timings, 99):.2f} ms",
        )
    )  # fmt: skip
    client.flushdb()
    client.close()


def seed_ingest(report: Report, sizes: Sizes, url: str) -> None:
    """The seed design: the Flask API, one requests.post per task."""
    from seed_api import post_one

    rows = baseline_rows(sizes.seed_rows)
    client = redis.Redis.from_url(url)
    rates = []
    with seed_api(url) as endpoint:
        for _ in range(sizes.repeat):
            client.flushdb()
            started = time.monotonic()
            for args, eta in rows:
                post_one(endpoint, "schedule_celery_task", args, eta.strftime("%Y-%m-%d %H:%M:%S"))
            rates.append(len(rows) / (time.monotonic() - started))
            assert client.llen("celery") == len(rows)
    report.add(
        Result(
            "ingest", "seed: Flask + requests.post", "tasks/s", rates,
            note=f"{len(rows):,} tasks, one HTTP request each", higher_is_better=True,
        )
    )  # fmt: skip
    flush_celery_queue(url)
    client.close()


def as_json(report: Report) -> str:
    """The report as JSON, for docs and comparisons between runs."""
    return json.dumps([r.__dict__ for r in report.results], indent=1)
