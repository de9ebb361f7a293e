"""One Redis against a Redis Cluster of 3 primaries (and 3 replicas), same run: ingest and
hand-off, with the store in 1 partition (every key in one slot, so on one primary) and in 3
(one slot per partition, on three primaries: SCHEDKIT_STORE_PARTITIONS).

On one machine the primaries share its cores with the server, the dispatchers and the
scheduler, so the ratio says what partitions cost or save in round trips and Redis CPU,
not what three machines would give.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis
from burst import WINDOW, _park
from common import PYTHON, Report, Result, Sizes, future, wait_until, write_timetable
from parts import dispatcher_processes, fresh_prefix
from redis.crc import key_slot

from schedkit.model import TaskState
from schedkit.runtime.stack import Stack, local_settings
from schedkit.settings import Settings
from schedkit.store.keys import one_slot, partition_prefix
from schedkit.store.store import Store
from schedkit.testing import cluster_set, redis_server

#: Dispatcher processes in each hand-off run, whatever the partition count.
DISPATCHERS = 2
SLOTS = 16384


def _prefix(parts: int, primaries: int = 3) -> str:
    """A fresh prefix whose partitions' slots fall to different primaries (``redis-cli
    --cluster create`` gives each an equal run of slots), so 3 partitions use 3 primaries."""
    while True:
        prefix = fresh_prefix()
        owners = {
            key_slot(f"{partition_prefix(one_slot(prefix), p)}:claims".encode())
            * primaries
            // SLOTS
            for p in range(parts)
        }
        if len(owners) == min(parts, primaries):
            return prefix


class _Cpu:
    """CPU seconds Redis servers used (INFO cpu): what the store itself cost."""

    def __init__(self, ports: list[int]) -> None:
        self.clients = [redis.Redis(port=port) for port in ports]

    def read(self) -> list[float]:
        return [
            float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
            for info in (client.info("cpu") for client in self.clients)
        ]

    def busiest_since(self, before: list[float], tasks: int) -> float:
        """Microseconds of the busiest server's CPU per task since ``before``."""
        spent = max(after - first for after, first in zip(self.read(), before, strict=True))
        return spent * 1e6 / tasks


def _ingest(
    store_url: str, broker_url: str, timetable: Path, rows: int, cpu: _Cpu, parts: int = 1
) -> tuple[float, float]:
    """Tasks/s of the scheduler CLI over ``timetable`` into a stack on ``store_url``, and the
    busiest Redis's CPU microseconds per task."""
    settings = local_settings(
        store_url=store_url, broker_url=broker_url, prefix=_prefix(parts), store_partitions=parts
    )
    with Stack(settings, worker=False) as stack:
        before = cpu.read()
        started = time.monotonic()
        done = subprocess.run(
            [PYTHON, "-m", "schedkit.scheduler", str(timetable), "-q", "--tz", "UTC",
             "--server", stack.address],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        elapsed = time.monotonic() - started
        used = cpu.busiest_since(before, rows)
        assert stack.store is not None
        parked = stack.store.count(TaskState.SCHEDULED)
    if done.returncode != 0 or parked != rows:
        raise RuntimeError(f"scheduler exit {done.returncode}, {parked} of {rows} parked")
    return rows / elapsed, used


def _dispatchers(settings: Settings, broker_url: str) -> contextlib.AbstractContextManager[None]:
    """``DISPATCHERS`` ``schedkit dispatch`` processes on the store ``settings`` name."""
    env = {
        "SCHEDKIT_STORE_URL": settings.store_url,
        "SCHEDKIT_BROKER_URL": broker_url,
        "SCHEDKIT_PREFIX": settings.prefix,
        "SCHEDKIT_STORE_PARTITIONS": str(settings.store_partitions),
    }
    return dispatcher_processes(DISPATCHERS, env)


def _handoff(
    store_url: str, broker_url: str, count: int, cpu: _Cpu, parts: int
) -> tuple[float, float]:
    """Tasks/s from the instant ``count`` parked tasks enter the window until all are QUEUED,
    and the busiest Redis's CPU microseconds per task."""
    settings = Settings(
        store_url=store_url, broker_url=broker_url, prefix=_prefix(parts), store_partitions=parts
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
            before = cpu.read()
            began = time.monotonic()
            wait_until(lambda: store.count(TaskState.QUEUED) >= count, 600, "every hand-off")
            took = time.monotonic() - began
            used = cpu.busiest_since(before, count)
    finally:
        store.close()
    return count / took, used


def cluster_ingest(report: Report, sizes: Sizes, url: str, workdir: Path) -> None:
    """The same timetable into one Redis and into a 3-primary cluster with 1 and 3
    partitions, then the same burst handed off from each cluster store, ``repeat`` times."""
    rows = sizes.cluster_rows
    timetable = write_timetable(workdir / "cluster-timetable.csv", rows, future())
    burst = sizes.handoff_tasks
    ingest: dict[str, list[tuple[float, float]]] = {"p3": [], "p1": [], "one": []}
    handoff: dict[str, list[tuple[float, float]]] = {"p3": [], "p1": []}
    one = _Cpu([int(str(url).rsplit(":", 1)[1].split("/")[0])])
    with redis_server(appendonly=False) as broker, cluster_set() as cluster:
        primaries = _Cpu([server.port for server in cluster.primaries])
        on = cluster.url()
        for _ in range(sizes.repeat):
            ingest["p3"].append(_ingest(on, broker.url, timetable, rows, primaries, parts=3))
            ingest["p1"].append(_ingest(on, broker.url, timetable, rows, primaries))
            ingest["one"].append(_ingest(url, broker.url, timetable, rows, one))
            handoff["p3"].append(_handoff(on, broker.url, burst, primaries, parts=3))
            handoff["p1"].append(_handoff(on, broker.url, burst, primaries, parts=1))
            redis.Redis.from_url(broker.url).flushdb()  # the burst's messages
    whos = (
        ("p3", "schedkit on a Redis Cluster (3 primaries), 3 partitions"),
        ("p1", "schedkit on a Redis Cluster (3 primaries), 1 partition"),
        ("one", "schedkit on one Redis"),
    )
    for measure, runs, note in (
        ("ingest", ingest, f"{rows:,} rows, scheduler CLI"),
        (
            "hand-off",
            handoff,
            f"{burst:,} tasks entering the window at one instant, {DISPATCHERS} dispatchers",
        ),
    ):
        for key, who in whos:
            if key in runs:
                report.add(
                    Result(f"one Redis vs cluster: {measure}", who, "tasks/s",
                           [rate for rate, _ in runs[key]], note=note, higher_is_better=True)
                )  # fmt: skip
        for key, who in whos:
            if key in runs:
                # What bounds a partition: the CPU its primary spends per task (one core).
                report.add(
                    Result(f"busiest Redis CPU per task: {measure}", who, "µs",
                           [used for _, used in runs[key]], note=note)
                )  # fmt: skip
