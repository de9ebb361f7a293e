"""Ingest on one Redis against a Redis Cluster of 3 primaries (and 3 replicas), same run.

Every store key sits in one slot of the cluster (the prefix is a hash tag), so a cluster adds
failover, not throughput: this measures what its client costs (redirect-aware routing, no
pipelined scripts), on the same machine and timetable.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from common import PYTHON, Report, Result, Sizes, future, write_timetable
from parts import fresh_prefix

from schedkit.model import TaskState
from schedkit.runtime.stack import Stack, local_settings
from schedkit.testing import cluster_set, redis_server


def _ingest(store_url: str, broker_url: str, timetable: Path, rows: int) -> float:
    """Tasks/s of the scheduler CLI over ``timetable`` into a stack on ``store_url``."""
    settings = local_settings(store_url=store_url, broker_url=broker_url, prefix=fresh_prefix())
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


def cluster_ingest(report: Report, sizes: Sizes, url: str, workdir: Path) -> None:
    """The same timetable into one Redis and into a 3-primary cluster, ``repeat`` times each."""
    timetable = write_timetable(workdir / "cluster-timetable.csv", sizes.cluster_rows, future())
    with redis_server(appendonly=False) as broker, cluster_set() as cluster:
        on_cluster, on_one = [], []
        for _ in range(sizes.repeat):
            on_cluster.append(_ingest(cluster.url(), broker.url, timetable, sizes.cluster_rows))
            on_one.append(_ingest(url, broker.url, timetable, sizes.cluster_rows))
    note = f"{sizes.cluster_rows:,} rows, scheduler CLI"
    report.add(
        Result("one Redis vs cluster: ingest", "schedkit on a Redis Cluster (3 primaries)",
               "tasks/s", on_cluster, note=note, higher_is_better=True)
    )  # fmt: skip
    report.add(
        Result("one Redis vs cluster: ingest", "schedkit on one Redis", "tasks/s", on_one,
               note=note, higher_is_better=True)
    )  # fmt: skip
