"""One Redis against a Redis Cluster of 3 primaries (and 3 replicas), same run: ingest and
hand-off, with the store in 1 partition (every key in one slot, so on one primary) and in 3
(one slot per partition, on three primaries: SCHEDKIT_STORE_PARTITIONS).

On one machine the primaries share its cores with the server, the dispatchers and the
scheduler, so the ratio says what partitions cost or save in round trips and Redis CPU,
not what three machines would give.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis
from burst import WINDOW, _park
from common import PYTHON, Report, Result, Sizes, future, wait_until, write_timetable
from parts import fresh_prefix

from schedkit.model import TaskState
from schedkit.runtime.stack import Stack, local_settings
from schedkit.settings import Settings
from schedkit.store.store import Store
from schedkit.testing import cluster_set, redis_server

#: Dispatcher processes in each hand-off run, whatever the partition count.
DISPATCHERS = 2


def _ingest(store_url: str, broker_url: str, timetable: Path, rows: int, parts: int = 1) -> float:
    """Tasks/s of the scheduler CLI over ``timetable`` into a stack on ``store_url``."""
    settings = local_settings(
        store_url=store_url, broker_url=broker_url, prefix=fresh_prefix(), store_partitions=parts
    )
    with Stack(settings, worker=False) as stack:
        started = time.monotonic()
        done = subprocess.run(
            [PYTHON, "-m", "schedkit.scheduler", str(timetable), "-q", "--tz", "UTC",
             "--server", stack.address],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        elapsed = time.monotonic() - started
        assert stack.store is not None
        parked = stack.store.count(TaskState.SCHEDULED)
    if done.returncode != 0 or parked != rows:
        raise RuntimeError(f"scheduler exit {done.returncode}, {parked} of {rows} parked")
    return rows / elapsed


@contextlib.contextmanager
def _dispatchers(settings: Settings, broker_url: str) -> Iterator[None]:
    """``DISPATCHERS`` ``schedkit dispatch`` processes, no in-flight bound (no worker
    consumes here: the rate measured is the dispatchers')."""
    env = {
        **os.environ,
        "SCHEDKIT_STORE_URL": settings.store_url,
        "SCHEDKIT_BROKER_URL": broker_url,
        "SCHEDKIT_PREFIX": settings.prefix,
        "SCHEDKIT_STORE_PARTITIONS": str(settings.store_partitions),
        "SCHEDKIT_MAX_IN_FLIGHT": "0",
    }
    processes = [
        subprocess.Popen(
            [PYTHON, "-m", "schedkit", "dispatch"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(DISPATCHERS)
    ]
    try:
        yield
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)


def _handoff(store_url: str, broker_url: str, count: int, parts: int) -> float:
    """Tasks/s from the instant ``count`` parked tasks enter the window until all are QUEUED."""
    settings = Settings(
        store_url=store_url, broker_url=broker_url, prefix=fresh_prefix(), store_partitions=parts
    )
    store = Store.for_settings(settings)
    try:
        lead = 8.0 + count / 5000  # time to park them and start the dispatchers first
        enters = datetime.now(UTC) + timedelta(seconds=lead)
        _park(store, settings, count, enters + timedelta(seconds=WINDOW))
        with _dispatchers(settings, broker_url):
            wait = (enters - datetime.now(UTC)).total_seconds()
            assert wait > 0, "parking took longer than the lead: raise it"
            time.sleep(wait)  # until the burst enters the window (the dispatchers wait too)
            began = time.monotonic()
            wait_until(lambda: store.count(TaskState.QUEUED) >= count, 600, "every hand-off")
            took = time.monotonic() - began
    finally:
        store.close()
    return count / took


def cluster_ingest(report: Report, sizes: Sizes, url: str, workdir: Path) -> None:
    """The same timetable into one Redis and into a 3-primary cluster with 1 and 3
    partitions, then the same burst handed off from each cluster store, ``repeat`` times."""
    rows = sizes.cluster_rows
    timetable = write_timetable(workdir / "cluster-timetable.csv", rows, future())
    burst = sizes.handoff_tasks
    ingest: dict[str, list[float]] = {"p3": [], "p1": [], "one": []}
    handoff: dict[str, list[float]] = {"p3": [], "p1": []}
    with redis_server(appendonly=False) as broker, cluster_set() as cluster:
        for _ in range(sizes.repeat):
            ingest["p3"].append(_ingest(cluster.url(), broker.url, timetable, rows, parts=3))
            ingest["p1"].append(_ingest(cluster.url(), broker.url, timetable, rows))
            ingest["one"].append(_ingest(url, broker.url, timetable, rows))
            handoff["p3"].append(_handoff(cluster.url(), broker.url, burst, parts=3))
            handoff["p1"].append(_handoff(cluster.url(), broker.url, burst, parts=1))
            redis.Redis.from_url(broker.url).flushdb()  # the burst's messages
    note = f"{rows:,} rows, scheduler CLI"
    for key, who in (
        ("p3", "schedkit on a Redis Cluster (3 primaries), 3 partitions"),
        ("p1", "schedkit on a Redis Cluster (3 primaries), 1 partition"),
        ("one", "schedkit on one Redis"),
    ):
        report.add(
            Result("one Redis vs cluster: ingest", who, "tasks/s", ingest[key], note=note,
                   higher_is_better=True)
        )  # fmt: skip
    note = f"{burst:,} tasks entering the window at one instant, {DISPATCHERS} dispatchers"
    for key, who in (
        ("p3", "schedkit on a Redis Cluster (3 primaries), 3 partitions"),
        ("p1", "schedkit on a Redis Cluster (3 primaries), 1 partition"),
    ):
        report.add(
            Result("cluster partitions: hand-off", who, "tasks/s", handoff[key], note=note,
                   higher_is_better=True)
        )  # fmt: skip
