"""Unary latency: one ScheduleTask call at 1 and 8 concurrent clients, next to one seed HTTP
request, one bare apply_async(eta=...) and one RQ enqueue_at."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta

import redis
from common import Report, Result, Sizes, future, percentile
from parts import flush_celery_queue, seed_api, server_process

from schedkit.client.client import Client
from schedkit.model import TaskSpec


def _timed(calls: int, clients: int, make: Callable[[int], Callable[[int], None]]) -> list[float]:
    """Latencies in ms of ``calls`` calls shared by ``clients`` threads, each with its own
    connection (``make(thread)`` returns that thread's call)."""
    latencies: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def work(thread: int) -> None:
        call = make(thread)
        call(-1 - thread)  # connect and warm up outside the measure
        mine = []
        start.wait()
        for n in range(thread, calls, clients):
            began = time.perf_counter()
            call(n)
            mine.append((time.perf_counter() - began) * 1000)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def _add(report: Report, who: str, clients: int, latencies: list[float], repeat: int) -> None:
    report.add(
        Result(
            f"unary p50, {clients} client{'s' if clients > 1 else ''}", who, "ms",
            [percentile(latencies, 50)],
        )
    )  # fmt: skip
    report.add(
        Result(
            f"unary p99, {clients} client{'s' if clients > 1 else ''}", who, "ms",
            [percentile(latencies, 99)], note=f"{len(latencies):,} calls",
        )
    )  # fmt: skip


def schedkit_latency(report: Report, sizes: Sizes, url: str) -> None:
    """ScheduleTask through schedkit.Client, each thread on its own channel, to a server in
    a process of its own."""
    start = future()
    with server_process(url) as address:
        for clients in (1, 8):

            def make(thread: int, offset: int = clients * 10**7) -> Callable[[int], None]:
                client = Client.connect(address)

                def call(n: int) -> None:
                    at = start + timedelta(seconds=n + offset)
                    client.schedule_spec(TaskSpec("water_plants", at, [f"plant-{n}"]))

                return call

            _add(
                report,
                "schedkit ScheduleTask",
                clients,
                _timed(sizes.latency_calls, clients, make),
                sizes.repeat,
            )


def baseline_latency(report: Report, sizes: Sizes, url: str) -> None:
    """The seed's HTTP request (1 and 8 clients), a bare apply_async and RQ's enqueue_at."""
    from fixtures import rq_job, schedule_celery_task
    from rq import Queue
    from seed_api import post_one

    start = future()
    calls = max(sizes.seed_rows, 10)
    with seed_api(url) as endpoint:
        for clients in (1, 8):

            def make_post(thread: int) -> Callable[[int], None]:
                def call(n: int) -> None:
                    eta = (start + timedelta(seconds=abs(n))).strftime("%Y-%m-%d %H:%M:%S")
                    post_one(endpoint, "schedule_celery_task", ["plant"], eta)

                return call

            _add(
                report, "seed: Flask + requests.post", clients, _timed(calls, clients, make_post), 1
            )

    def make_bare(thread: int) -> Callable[[int], None]:
        def call(n: int) -> None:
            schedule_celery_task.apply_async(args=["plant"], eta=start + timedelta(seconds=abs(n)))

        return call

    _add(report, "bare apply_async(eta)", 1, _timed(sizes.latency_calls, 1, make_bare), 1)
    connection = redis.Redis.from_url(url)
    queue = Queue("bench", connection=connection)

    def make_rq(thread: int) -> Callable[[int], None]:
        def call(n: int) -> None:
            queue.enqueue_at(start + timedelta(seconds=abs(n)), rq_job, "plant")

        return call

    _add(report, "RQ enqueue_at", 1, _timed(sizes.latency_calls, 1, make_rq), 1)
    connection.flushdb()
    connection.close()
    flush_celery_queue(url)
