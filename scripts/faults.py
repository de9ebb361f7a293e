"""Run the fault drills at full size and print what each one counted.

    .venv/bin/python scripts/faults.py                    # every drill, issue sizes
    .venv/bin/python scripts/faults.py --rows 10000 worker-kill

Exit 1 when any drill lost or duplicated a task (or a stream failed), else 0.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "drills"))

# scripts/drills: outside the shipped package
import failover

import faults
from schedkit.testing import interrupt_on_sigterm

DRILLS: dict[str, Callable[[argparse.Namespace], faults.Counts]] = {
    "server-kill": lambda o: faults.server_killed_mid_stream(o.rows, o.workdir),
    "redis-restart": lambda o: faults.redis_restarted_with_parked_tasks(o.rows, o.workdir),
    "worker-kill": lambda o: faults.worker_killed_holding_tasks(o.worker_rows, o.workdir),
    "dispatcher-kill": lambda o: faults.dispatcher_killed_mid_burst(o.burst_rows, o.workdir),
    "store-down": lambda o: faults.store_down_and_back(o.worker_rows, o.workdir),
    "store-partition": lambda o: faults.store_partitioned_and_healed(o.worker_rows, o.workdir),
    "broker-down": lambda o: faults.broker_down_and_back(o.worker_rows, o.workdir),
    "load": lambda o: faults.concurrent_streams(o.streams, o.stream_rows, o.workdir),
    # A Redis Cluster primary killed mid-ingest; the worker runs what it can in --run-for.
    "cluster-kill": lambda o: failover.cluster_primary_killed(
        o.rows, 1, base=o.workdir, run_for=o.run_for, replica_lag=o.replica_lag
    ),
    "cluster-kill-unreplicated": lambda o: failover.cluster_primary_killed(
        o.rows, 0, base=o.workdir, run_for=o.run_for, replica_lag=o.replica_lag
    ),
}
#: Drills that may lose acknowledged tasks by design: they report the loss, it is no failure.
LOSS_REPORTED = {"cluster-kill-unreplicated"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("drills", nargs="*", choices=[*DRILLS, []], help="default: all")
    parser.add_argument(
        "--rows", type=int, default=100_000, help="server-kill, redis-restart, cluster-kill"
    )
    parser.add_argument(
        "--worker-rows", type=int, default=2_000, help="tasks held by the worker, etc."
    )
    parser.add_argument(
        "--burst-rows", type=int, default=100_000, help="dispatcher-kill: tasks due at one instant"
    )
    parser.add_argument("--streams", type=int, default=50, help="concurrent scheduler streams")
    parser.add_argument("--stream-rows", type=int, default=20_000, help="rows per stream")
    parser.add_argument(
        "--run-for", type=float, default=240.0, help="cluster drills: seconds to run tasks"
    )
    parser.add_argument(
        "--replica-lag",
        type=float,
        default=0.0,
        help="cluster drills: freeze the killed primary's replica this long before the kill",
    )
    parser.add_argument("--workdir", type=Path, help="keep logs and data here")
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    interrupt_on_sigterm()  # a killed drill still stops the servers it started
    failed = False
    for name in options.drills or list(DRILLS):
        began = time.monotonic()
        counts = DRILLS[name](options)
        counts.notes["drill_s"] = round(time.monotonic() - began, 1)
        print(counts.line(), flush=True)
        lost = 0 if name in LOSS_REPORTED else counts.lost
        failed |= bool(lost or counts.duplicates or counts.notes.get("failed_streams"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
