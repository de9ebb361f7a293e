"""The Redis Cluster fault drill: a primary SIGKILLed during a timetable's ingest and hand-off.

A cluster of 3 primaries and 3 replicas (``schedkit.testing.cluster_set``) holds the store in
``partitions`` partitions, one per primary; a Redis of its own is the broker. The scheduler CLI
sends a timetable whose first runs are due at once, so the dispatcher hands tasks off while the
ingest goes on; then the primary holding partition 1 is killed. The cluster promotes its
replica after the node timeout (5 s); with ``replicas=1`` the killed node is started again as
the new primary's replica (writes wait for one replica, so none is acknowledged meanwhile).

What is counted: the rows the scheduler says were accepted (``created``/``existing`` in its
``--output``) and are missing from the store afterwards (lost), the tasks the worker ran more
than once (the demo app's run log, kept in partition 0, on a primary that is not killed) and
the accepted tasks that never ran. Like every drill it only counts; callers judge.
"""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis

from faults import Counts, clean_env, poll, workdir
from schedkit.client.client import Client
from schedkit.demo import runs
from schedkit.errors import SchedkitError
from schedkit.model import FINAL_STATES, TaskState, task_id_for
from schedkit.runtime.embedded import RedisServer
from schedkit.runtime.stack import Stack, local_settings
from schedkit.store.store import Store
from schedkit.testing import ClusterSet, cluster_set

#: A prefix whose three partitions' hash slots fall to three different primaries of
#: ``cluster_set`` (slots in equal thirds; crc16 is fixed).
PREFIX = "store"
#: The partition whose primary is killed: not 0, where the demo app keeps its run log.
VICTIM = 1
ACCEPTED = ("created", "existing")


def write_due_timetable(path: Path, rows: int, first: datetime, per_second: float) -> Path:
    """``rows`` distinct ``add`` runs, the first at ``first``, then ``per_second`` a second."""
    with open(path, "w") as out:
        out.write("task,run_at,args\n")
        for i in range(rows):
            moment = first + timedelta(seconds=i / per_second)
            out.write(f'add,{moment:%Y-%m-%dT%H:%M:%S.%fZ},"[{i}, 1]"\n')
    return path


def accepted_ids(output: Path) -> list[str]:
    """Ids of the rows the scheduler's ``--output`` says the server accepted."""
    with open(output, newline="") as rows:
        return [row["id"] for row in csv.DictReader(rows) if row["outcome"] in ACCEPTED]


def missing_ids(store: Store, ids: list[str], chunk: int = 5000) -> list[str]:
    """Those of ``ids`` the store has no record of."""
    missing: list[str] = []
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk]
        missing += [i for i, r in zip(part, store.get_many(part), strict=True) if r is None]
    return missing


def _stored(store: Store) -> int:
    return sum(store.count(state) for state in TaskState)


def _handed(store: Store) -> int:
    return sum(store.count(state) for state in TaskState if state != TaskState.SCHEDULED)


class _Probe:
    """After the kill, schedules a far-off task into the killed partition every 0.2 s (a
    fresh key each time, so an OK means the write and its replica WAIT both went through)
    until one is accepted: the time the partition took to take writes again."""

    def __init__(self, address: str, store: Store, partition: int) -> None:
        self.address = address
        self.store = store
        self.partition = partition
        self.recovered_s: float | None = None
        self.failed_calls = 0
        self.killed_at = 0.0
        self._keys = self.keys()  # before the kill: the probe's clock starts at once
        self._thread = threading.Thread(target=self._run, daemon=True)

    def keys(self) -> list[str]:
        found: list[str] = []
        n = 0
        while len(found) < 2000:
            key = f"drill-probe-{n}"
            if self.store.partition_of(task_id_for(key)) == self.partition:
                found.append(key)
            n += 1
        return found

    def start(self, killed_at: float) -> None:
        self.killed_at = killed_at
        self._thread.start()

    def _run(self) -> None:
        run_at = datetime.now(UTC) + timedelta(days=1)
        with Client.connect(self.address, token="") as client:
            for key in self._keys:
                try:
                    client.schedule("add", 0, 0, run_at=run_at, key=key)
                except SchedkitError:
                    self.failed_calls += 1
                    time.sleep(0.2)  # a caller's pause before trying again
                    continue
                self.recovered_s = round(time.monotonic() - self.killed_at, 1)
                return

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def _restart_as_replica(
    cluster: ClusterSet, killed: RedisServer, key: str, killed_at: float, seen: dict[str, float]
) -> None:
    """Once the cluster has promoted the killed primary's replica, start the killed node
    again: it rejoins (its nodes.conf is kept) as the new primary's replica."""
    _wait_failover(cluster, killed, key, killed_at, seen)
    killed.start()


def cluster_primary_killed(
    rows: int,
    replicas: int,
    partitions: int = 3,
    base: Path | None = None,
    *,
    batch_size: int = 1000,
    max_in_flight: int = 4,
    kill_at: float = 0.3,
    per_second: float = 1000.0,
    lead: float = 1.0,
    replica_lag: float = 0.0,
    restart: bool | None = None,
    run_for: float = 300.0,
) -> Counts:
    """SIGKILL the primary holding partition 1 once ``kill_at`` of the ``rows`` rows are
    stored and the hand-off has begun (with ``replica_lag``, after its replica has been
    frozen that long, so the replica the cluster promotes is behind); wait (at most
    ``run_for`` seconds after the ingest) for every kept task to finish; count lost, run
    twice and never run. The killed node is started again as a replica if ``restart``
    (by default with ``replicas``, whose writes wait for one)."""
    label = f"cluster-kill-r{replicas}" + (f"-lag{replica_lag:g}" if replica_lag else "")
    victim = VICTIM if partitions > 1 else 0
    with (
        workdir(base and base / label) as work,
        cluster_set() as cluster,
        RedisServer(appendonly=False, data_dir=work / "broker") as broker,
    ):
        settings = local_settings(
            store_url=cluster.url(),
            broker_url=broker.url,
            prefix=PREFIX,
            store_partitions=partitions,
            store_replicas=replicas,
            store_replica_timeout=1.0,
            handoff_window=3.0,
            poll_interval=0.2,
            claim_lease=5.0,
            worker_concurrency=4,
            # A hand-off lost with the killed primary comes back after the visibility timeout.
            visibility_timeout=15.0,
        )
        with Stack(settings, worker_log=str(work / "worker.log")) as stack:
            stack.wait_for_worker(60)
            assert stack.store is not None
            store = stack.store
            table = work / "timetable.csv"
            output = work / "out.csv"
            # Due as soon as the scheduler has read the table (--past run sends a run it
            # finds just past as due now): the hand-off runs during the ingest.
            first = datetime.now(UTC) + timedelta(seconds=lead)
            write_due_timetable(table, rows, first, per_second)
            probe = _Probe(stack.address, store, victim)
            began = time.monotonic()
            with open(work / "scheduler.err", "w") as err:
                sending = subprocess.Popen(
                    [sys.executable, "-m", "schedkit.scheduler", str(table),
                     "--server", stack.address, "--source", label, "-q", "--past", "run",
                     "--retry-for", "300s", "--output", str(output),
                     "--batch-size", str(batch_size), "--max-in-flight", str(max_in_flight)],
                    stdout=subprocess.DEVNULL, stderr=err, env=clean_env(),
                )  # fmt: skip
            restarter: threading.Thread | None = None
            seen: dict[str, float] = {}
            try:
                poll(
                    lambda: _handed(store) > 0 and _stored(store) >= rows * kill_at,
                    120 + rows / 500,
                    "the ingest and the hand-off to be under way",
                    every=0.02,
                )
                stored_at_kill, handed_at_kill = _stored(store), _handed(store)
                key = store.parts[victim].claims
                killed = cluster.owner(key)
                frozen = 0
                if replica_lag:
                    # A replica that fell behind (a loaded host, a slow link): it stops
                    # taking the primary's writes for replica_lag s, then the primary dies.
                    behind = next(
                        r for r in cluster.replicas if cluster.primary_of(r) == killed.port
                    )
                    assert behind.process is not None
                    frozen = behind.process.pid
                    os.kill(frozen, signal.SIGSTOP)
                    time.sleep(replica_lag)  # the lag itself, not a wait for a state
                    stored_at_kill, handed_at_kill = _stored(store), _handed(store)
                killed.kill()
                if frozen:
                    os.kill(frozen, signal.SIGCONT)
                killed_at = time.monotonic()
                probe.start(killed_at)
                if replicas if restart is None else restart:
                    restarter = threading.Thread(
                        target=_restart_as_replica,
                        args=(cluster, killed, key, killed_at, seen),
                        daemon=True,
                    )
                    restarter.start()
                else:
                    threading.Thread(
                        target=_wait_failover, args=(cluster, killed, key, killed_at, seen),
                        daemon=True,
                    ).start()  # fmt: skip
                exit_code = sending.wait(timeout=900)
                ingest_s = round(time.monotonic() - began, 1)
                probe.join(120)
                if restarter is not None:
                    restarter.join(120)
            finally:
                if sending.poll() is None:
                    sending.kill()
                    sending.wait()
            accepted = accepted_ids(output)
            lost = missing_ids(store, accepted)
            kept = len(accepted) - len(lost)
            finished = time.monotonic()
            # Not all run in time: counted below as never run, the script says how far.
            with contextlib.suppress(TimeoutError):
                poll(
                    lambda: sum(store.count(s) for s in FINAL_STATES) >= kept,
                    run_for,
                    "every kept task to finish",
                    every=1.0,
                )
            run_s = round(time.monotonic() - finished, 1)
            ran = Counter(str(entry["id"]) for entry in runs(store))
            final = sum(store.count(s) for s in FINAL_STATES)
            retried = (work / "scheduler.err").read_text().count("retrying")
            refused = sum(
                int(store.redis.hget(keys.stats, "refused:duplicate") or 0) for keys in store.parts
            )
    lost_set = set(lost)
    kept_ids = [i for i in accepted if i not in lost_set]
    return Counts(
        label,
        len(accepted),
        sum(ran[i] for i in accepted),
        sum(n - 1 for n in ran.values() if n > 1),
        len(lost),
        {
            "rows": rows,
            "replicas": replicas,
            "partitions": partitions,
            "replica_lag_s": replica_lag,
            "stored_at_kill": stored_at_kill,
            "handed_at_kill": handed_at_kill,
            "killed_mid_ingest": handed_at_kill > 0 and stored_at_kill < rows,
            "scheduler_exit": exit_code,
            "retried_calls": retried,
            "failover_s": seen.get("failover_s", -1),
            "recovered_s": probe.recovered_s if probe.recovered_s is not None else -1,
            "ingest_s": ingest_s,
            "ran_twice": sum(1 for n in ran.values() if n > 1),
            "never_ran": sum(1 for i in kept_ids if ran[i] == 0),
            "final": final,
            "run_s_after_ingest": run_s,
            "duplicate_starts_refused": refused,
        },
    )


def _wait_failover(
    cluster: ClusterSet, killed: RedisServer, key: str, killed_at: float, seen: dict[str, float]
) -> None:
    """Note in ``seen`` when another node owns ``key``'s slot."""

    def moved() -> bool:
        try:
            return cluster.owner(key).port != killed.port
        except redis.RedisError:  # the topology is being rewritten: ask again
            return False

    poll(moved, 120, "the failover", every=0.1)
    seen["failover_s"] = round(time.monotonic() - killed_at, 1)
