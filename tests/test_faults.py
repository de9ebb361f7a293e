"""Fault drills at suite size: real processes crashed or cut off; nothing lost, nothing twice.

The same drills run at full size with ``scripts/faults`` (100,000 rows, 50 streams), the
Redis Cluster drill too (``scripts/faults cluster-kill cluster-kill-unreplicated``).
Each test prints the drill's counts; run with ``-s`` to see them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import failover  # scripts/drills
import pytest

import faults
from conftest import schedule_ids
from schedkit.model import TaskSpec, task_id_for
from schedkit.service.schedules import Schedules
from schedkit.store.store import Store

# Whole stacks start, crash and recover here; on a busy two-core machine that takes minutes.
pytestmark = pytest.mark.timeout(400)


def report(counts: faults.Counts) -> faults.Counts:
    print(counts.line())
    return counts


def test_server_sigkilled_mid_stream_then_every_row_is_stored_once(tmp_path: Path) -> None:
    counts = report(faults.server_killed_mid_stream(10_000, tmp_path))
    assert counts.notes["killed_mid_stream"], counts.notes
    assert counts.notes["retried"]
    assert (counts.accepted, counts.duplicates, counts.lost) == (10_000, 0, 0)
    assert counts.notes["first_exit"] == 0
    assert (counts.notes["rerun_exit"], counts.notes["rerun_created"]) == (0, 0)


def test_redis_restarted_with_parked_tasks_keeps_and_runs_them_all(tmp_path: Path) -> None:
    counts = report(faults.redis_restarted_with_parked_tasks(300, tmp_path))
    assert counts.notes["parked_after_restart"] == 300
    assert (counts.accepted, counts.executed, counts.duplicates, counts.lost) == (300, 300, 0, 0)
    assert counts.notes["succeeded"] == 300


def test_worker_sigkilled_holding_tasks_each_still_runs_once(tmp_path: Path) -> None:
    counts = report(faults.worker_killed_holding_tasks(100, tmp_path))
    assert counts.notes["held_at_kill"] == 100
    assert counts.notes["worker_restarts"] == 1
    assert (counts.accepted, counts.executed, counts.duplicates, counts.lost) == (100, 100, 0, 0)


def test_dispatcher_sigkilled_mid_burst_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    counts = report(faults.dispatcher_killed_mid_burst(1000, tmp_path, bound=100))
    # Killed with part of the burst still to hand off: the second dispatcher finished it.
    assert counts.notes["parked_at_kill"] + counts.notes["claimed_at_kill"] > 0
    assert (counts.accepted, counts.executed, counts.duplicates, counts.lost) == (1000, 1000, 0, 0)
    assert counts.notes["in_flight_left"] == 0


def test_store_down_is_unavailable_at_once_and_everything_recovers(tmp_path: Path) -> None:
    counts = report(faults.store_down_and_back(50, tmp_path))
    assert counts.notes["status"].startswith("'UNAVAILABLE: schedule store unreachable")
    assert (counts.notes["health_down"], counts.notes["health_back"]) == ("NOT_SERVING", "SERVING")
    assert counts.notes["scheduler_exit"] == 0
    # 50 before the outage, 1 after it, 50 rows the scheduler sent while retrying.
    assert (counts.accepted, counts.executed, counts.duplicates, counts.lost) == (101, 51, 0, 0)


def test_store_partition_fails_calls_in_the_timeout_and_everything_recovers(
    tmp_path: Path,
) -> None:
    counts = report(faults.store_partitioned_and_healed(50, tmp_path))
    assert counts.notes["status"].startswith("'UNAVAILABLE: schedule store unreachable")
    # Failed by the store timeout, not hung until TCP gives up (the call's own deadline is 30 s).
    assert counts.notes["failed_in_s"] < 10 * faults.PARTITION_STORE_TIMEOUT
    assert (counts.notes["health_down"], counts.notes["health_back"]) == ("NOT_SERVING", "SERVING")
    assert counts.notes["scheduler_exit"] == 0
    # 50 before the partition, 1 after it, 50 rows the scheduler sent while retrying.
    assert (counts.accepted, counts.executed, counts.duplicates, counts.lost) == (101, 51, 0, 0)


def test_broker_down_parks_work_until_it_is_back(tmp_path: Path) -> None:
    counts = report(faults.broker_down_and_back(50, tmp_path))
    assert counts.notes["handed_while_down"] == 0
    assert counts.notes["waiting_while_down"] == 50
    assert (counts.accepted, counts.executed, counts.duplicates, counts.lost) == (50, 50, 0, 0)


def test_concurrent_scheduler_streams_are_all_accepted(tmp_path: Path) -> None:
    counts = report(faults.concurrent_streams(4, 2_000, tmp_path))
    assert counts.notes["failed_streams"] == 0, counts.notes["first_error"]
    assert (counts.accepted, counts.duplicates, counts.lost) == (8_000, 0, 0)


# The Redis Cluster drill: 3,000 rows sent 10 a batch, so the kill lands mid-ingest.
CLUSTER_DRILL = {"batch_size": 10, "max_in_flight": 1, "run_for": 120.0}


def test_cluster_primary_killed_mid_ingest_with_a_replica_loses_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    counts = report(failover.cluster_primary_killed(3_000, 1, base=tmp_path, **CLUSTER_DRILL))
    assert counts.notes["killed_mid_ingest"], counts.notes
    assert counts.notes["retried_calls"] > 0, "the kill interrupted no call"
    assert counts.notes["scheduler_exit"] == 0
    assert (counts.accepted, counts.lost, counts.duplicates) == (3_000, 0, 0)
    assert counts.notes["never_ran"] == 0
    assert counts.executed == 3_000


def test_cluster_primary_killed_with_its_replica_behind_runs_nothing_twice(
    tmp_path: Path,
) -> None:
    """The killed primary's replica is frozen 2 s first, so the replica promoted lacks the
    last 2 s of writes: tasks created then (their callers told UNAVAILABLE, retrying),
    handed off, started. Claims and starts wait for the replica, so none of those reached
    a worker, and none runs a second time after the failover."""
    counts = report(
        failover.cluster_primary_killed(3_000, 1, base=tmp_path, replica_lag=2.0, **CLUSTER_DRILL)
    )
    assert counts.notes["killed_mid_ingest"], counts.notes
    assert counts.notes["scheduler_exit"] == 0
    assert (counts.accepted, counts.lost, counts.duplicates) == (3_000, 0, 0)
    assert counts.notes["never_ran"] == 0
    assert counts.executed == 3_000


def test_cluster_primary_killed_mid_ingest_without_replicas_reports_the_loss(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """Without SCHEDKIT_STORE_REPLICAS an acknowledged write may not have reached the
    replica the cluster promotes: what was lost is recorded, not asserted."""
    counts = report(failover.cluster_primary_killed(3_000, 0, base=tmp_path, **CLUSTER_DRILL))
    for name in ("ran_twice", "never_ran", "retried_calls", "failover_s", "recovered_s"):
        record_property(name, counts.notes[name])
    record_property("lost", counts.lost)
    assert counts.notes["killed_mid_ingest"], counts.notes
    assert counts.notes["failover_s"] > 0, "the cluster never promoted the replica"
    assert counts.notes["scheduler_exit"] == 0
    assert counts.accepted == 3_000


def test_the_cluster_drill_counts_an_accepted_row_the_store_lacks_as_lost(
    schedules: Schedules, store: Store, tmp_path: Path
) -> None:
    """The drill's census, on a store where one accepted row went missing."""
    at = datetime.now(UTC) + timedelta(hours=1)
    kept = schedule_ids(schedules, [TaskSpec("add", at, [n, 1], key=f"k{n}") for n in range(2)])
    gone = task_id_for("gone")
    output = tmp_path / "out.csv"
    output.write_text(
        "row,run_at,task,key,id,outcome,column,error\n"
        f"1,,add,k0,{kept[0]},created,,\n"
        f"2,,add,k1,{kept[1]},existing,,\n"
        f"3,,add,gone,{gone},created,,\n"
        "4,,add,bad,,rejected,run_at,too far\n"
    )
    accepted = failover.accepted_ids(output)
    assert accepted == [*kept, gone]
    assert failover.missing_ids(store, accepted, chunk=2) == [gone]
