"""Run every schedkit benchmark side by side with what users would do instead; print a table.

    .venv/bin/python scripts/bench/run.py            # full size: 1,000,000-row ingest
    .venv/bin/python scripts/bench/run.py --quick    # the same measures, minutes not tens
    .venv/bin/python scripts/bench/run.py --rows 200000 --only ingest,latency

Everything runs on one Redis the bench starts on a free port; nothing touches 6379. The table
shows medians of --repeat runs, the machine, and the load average before and after, because
other work on the machine moves absolute numbers: compare ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Report, Result, Sizes, load, machine
from parts import bench_redis, keep_workers_apart

from schedkit.testing import interrupt_on_sigterm

# What the design brief promises, per measure (schedkit's row is checked against it).
TARGETS: dict[str, tuple[str, float]] = {
    "ingest": (">=", 50_000),
    "unary p50, 1 client": ("<=", 1.0),
    "unary p99, 1 client": ("<=", 5.0),
    "unary p99, 32 clients": ("<=", 50.0),
    "hand-off before run time": (">=", 100.0),
    "burst: longest Lua call": ("<=", 10),
    "claim call, longest": ("<=", 10),
    "start lateness p99": ("<=", 50.0),
    "store memory": ("<=", 400),
    "worker RSS growth": ("<=", 50),
    "query: first page (100)": ("<=", 10),
}
GROUPS = ("ingest", "latency", "handoff", "lateness", "memory", "burst", "processes", "cluster")
#: The parts of the burst group, in the order they run (--burst-sides picks some: a
#: 1,000,000-task burst takes a quarter of an hour a side); "claims" times claim calls alone.
BURST_SIDES = ("schedkit", "schedkit-no-ack", "celery", "celery-queued", "claims")


def benchmarks(
    group: str, burst_sides: tuple[str, ...] = BURST_SIDES
) -> list[Callable[[Report, Sizes, str, Path], None]]:
    """The benchmark functions of one group, schedkit first."""
    import burst
    import cluster
    import ingest
    import latency
    import memory
    import processes
    import timing

    table: dict[str, list[Callable[..., None]]] = {
        "ingest": [
            lambda r, s, u, w: ingest.schedkit_ingest(r, s, u, w),
            lambda r, s, u, w: ingest.seed_ingest(r, s, u),
            lambda r, s, u, w: ingest.bare_loop_ingest(r, s, u),
            lambda r, s, u, w: ingest.rq_ingest(r, s, u),
        ],
        "latency": [
            lambda r, s, u, w: latency.schedkit_latency(r, s, u),
            lambda r, s, u, w: latency.baseline_latency(r, s, u),
        ],
        "handoff": [
            lambda r, s, u, w: timing.schedkit_handoff(r, s, u),
            lambda r, s, u, w: burst.handoff_rate(r, s, u),
        ],
        "lateness": [
            lambda r, s, u, w: timing.schedkit_lateness(r, s, u),
            lambda r, s, u, w: timing.celery_lateness(r, s, u),
        ],
        "memory": [
            lambda r, s, u, w: memory.schedkit_worker_memory(r, s, u),
            lambda r, s, u, w: memory.celery_worker_memory(r, s, u),
        ],
        "processes": [lambda r, s, u, w: processes.schedkit_processes(r, s, u)],
        "cluster": [lambda r, s, u, w: cluster.cluster_ingest(r, s, u, w)],
    }
    sides: dict[str, Callable[..., None]] = {
        "schedkit": lambda r, s, u, w: burst.schedkit_burst(r, s, u),
        "schedkit-no-ack": lambda r, s, u, w: burst.schedkit_burst(r, s, u, ack_emulation=False),
        "celery": lambda r, s, u, w: burst.celery_burst(r, s, u),
        "celery-queued": lambda r, s, u, w: burst.celery_queued(r, s, u),
        "claims": lambda r, s, u, w: burst.claim_calls(r, s, u),
    }
    table["burst"] = [sides[side] for side in burst_sides]
    return table[group]


def table(report: Report) -> str:
    """The results as a Markdown table, schedkit first in each measure, with ratios."""
    lines = [
        "| measure | who | median | unit | vs schedkit | target | note |",
        "| --- | --- | ---: | --- | ---: | --- | --- |",
    ]
    measures: dict[str, list[Result]] = {}
    for result in report.results:
        measures.setdefault(result.measure, []).append(result)
    for measure, results in measures.items():
        ours = next((r for r in results if r.who.startswith("schedkit")), None)
        for result in results:
            ratio = ""
            if ours is not None and result is not ours and ours.median and result.median:
                better = (
                    ours.median / result.median
                    if result.higher_is_better
                    else result.median / ours.median
                )
                if better > 1000:  # schedkit's figure is about zero: a ratio means nothing
                    ratio = "schedkit >1,000x better"
                elif better >= 1:
                    ratio = f"schedkit {better:,.1f}x better"
                else:
                    ratio = f"schedkit {1 / better:,.1f}x worse"
            target = ""
            goal = next((g for name, g in TARGETS.items() if measure.startswith(name)), None)
            if result is ours and goal is not None:
                op, bound = goal
                met = result.median >= bound if op == ">=" else result.median <= bound
                target = f"{op} {bound:,g}: {'met' if met else 'MISSED'}"
            lines.append(
                f"| {measure} | {result.who} | {result.median:,.4g} | {result.unit} | {ratio} "
                f"| {target} | {result.note} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the chosen benchmarks, print the table (and write JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes, a few minutes")
    size.add_argument("--smoke", action="store_true", help="tiny sizes: proves it runs")
    parser.add_argument("--rows", type=int, help="timetable rows for the schedkit ingest")
    parser.add_argument("--repeat", type=int, help="runs per measure (median shown)")
    parser.add_argument("--burst-tasks", type=int, help="tasks due at one instant in burst")
    parser.add_argument(
        "--burst-sides",
        default=",".join(BURST_SIDES),
        help=f"comma-separated sides of the burst group: {', '.join(BURST_SIDES)}",
    )
    parser.add_argument("--handoff-tasks", type=int, help="tasks per hand-off measure")
    parser.add_argument(
        "--only", default=",".join(GROUPS), help=f"comma-separated groups: {', '.join(GROUPS)}"
    )
    parser.add_argument(
        "--pin-workers",
        action="store_true",
        help="run the workers on the last core and everything else on the others",
    )
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    options = parser.parse_args(argv)
    sizes = Sizes.smoke() if options.smoke else Sizes.quick() if options.quick else Sizes()
    if options.rows:
        sizes.rows = options.rows
    if options.repeat:
        sizes.repeat = options.repeat
    if options.burst_tasks:
        sizes.burst_tasks = options.burst_tasks
    if options.handoff_tasks:
        sizes.handoff_tasks = options.handoff_tasks
    groups = [g.strip() for g in options.only.split(",") if g.strip()]
    unknown = set(groups) - set(GROUPS)
    if unknown:
        parser.error(f"unknown group(s) {', '.join(sorted(unknown))}; choose from {GROUPS}")

    burst_sides = tuple(side.strip() for side in options.burst_sides.split(",") if side.strip())
    if set(burst_sides) - set(BURST_SIDES):
        parser.error(f"unknown burst side(s) in {options.burst_sides!r}; choose from {BURST_SIDES}")

    interrupt_on_sigterm()  # a killed run still stops the servers and workers it started
    workers_core = keep_workers_apart() if options.pin_workers else None
    report = Report()
    report.loads.append(load())
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="schedkit-bench-") as tmp,
        bench_redis(Path(tmp) / "redis") as redis,
    ):
        os.environ["BENCH_REDIS_URL"] = redis.url  # read by the fixtures on import
        for group in groups:
            print(f"{group} (load {load()})", file=sys.stderr)
            for bench in benchmarks(group, burst_sides):
                bench(report, sizes, redis.url, Path(tmp))
    report.loads.append(load())
    placement = f"; workers alone on core {workers_core}" if workers_core is not None else ""
    print(f"machine: {machine()}{placement}")
    print(
        f"sizes: {', '.join(f'{k}={v:,}' for k, v in dataclasses.asdict(sizes).items())}; "
        f"took {time.monotonic() - started:,.0f}s; load average (1/5/15 min) before "
        f"{report.loads[0]}, after {report.loads[-1]}"
    )
    print()
    print(table(report))
    if options.json:
        options.json.write_text(
            json.dumps(
                {
                    "machine": machine() + placement,
                    "sizes": dataclasses.asdict(sizes),
                    "loads": report.loads,
                    "results": [dataclasses.asdict(r) for r in report.results],
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
