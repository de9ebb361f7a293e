"""What every benchmark shares: sizes, the machine, timetables, results and their table.

Benchmarks measure schedkit side by side with what a user would do instead, on one Redis the
bench starts itself on a free port (never the machine's 6379).
"""

from __future__ import annotations

import csv
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PYTHON = sys.executable


@dataclass
class Sizes:
    """How big each benchmark runs; --quick and --smoke scale everything down."""

    rows: int = 1_000_000  # timetable rows through the scheduler CLI
    baseline_rows: int = 3_000  # tasks per baseline ingest (reported as a rate)
    seed_rows: int = 1_000  # the seed design pays one HTTP request per task
    repeat: int = 3  # runs per measure; the table shows the median
    latency_calls: int = 2_000  # ScheduleTask calls per client count
    handoff_tasks: int = 20_000
    handoff_span: float = 60.0  # seconds over which handoff_tasks fall due
    lateness_tasks: int = 1_000
    lateness_span: float = 10.0
    eta_tasks: int = 20_000  # ETA messages a plain Celery worker is given
    query_calls: int = 50
    load_seconds: float = 20.0  # seconds of 32-client load per server process count
    cluster_rows: int = 100_000  # timetable rows into one Redis and into a cluster
    burst_tasks: int = 20_000  # due at one instant: schedkit vs a plain Celery worker

    @classmethod
    def quick(cls) -> Sizes:
        """Minutes, not tens of minutes: the same measures, smaller."""
        return cls(
            rows=100_000,
            baseline_rows=1_000,
            seed_rows=300,
            repeat=3,
            latency_calls=500,
            handoff_tasks=5_000,
            handoff_span=20.0,
            lateness_tasks=300,
            lateness_span=5.0,
            eta_tasks=3_000,
            query_calls=20,
            load_seconds=8.0,
            cluster_rows=20_000,
            burst_tasks=5_000,
        )

    @classmethod
    def smoke(cls) -> Sizes:
        """Seconds: proves every benchmark runs and yields numbers (the test suite's size)."""
        return cls(
            rows=2_000,
            baseline_rows=100,
            seed_rows=30,
            repeat=1,
            latency_calls=50,
            handoff_tasks=200,
            handoff_span=4.0,
            lateness_tasks=30,
            lateness_span=2.0,
            eta_tasks=100,
            load_seconds=1.0,
            cluster_rows=300,
            query_calls=3,
            burst_tasks=200,
        )


@dataclass
class Result:
    """One line of the table: a measure, who, the median value, and the runs behind it."""

    measure: str
    who: str
    unit: str
    values: list[float]
    note: str = ""
    higher_is_better: bool = False

    @property
    def median(self) -> float:
        """The median of the runs."""
        return statistics.median(self.values)


@dataclass
class Report:
    """Everything one bench run measured, with the machine it ran on."""

    results: list[Result] = field(default_factory=list)
    loads: list[str] = field(default_factory=list)

    def add(self, result: Result) -> Result:
        """Keep a result and say it on stderr at once (long runs show progress)."""
        self.results.append(result)
        values = ", ".join(f"{v:,.3g}" for v in result.values)
        print(f"  {result.measure} / {result.who}: {values} {result.unit}", file=sys.stderr)
        return result


def load() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine skews the numbers."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def machine() -> str:
    """CPU model, cores, memory, OS and Python: stated next to every table."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{mem_kb / 1024 / 1024:.0f} GiB"
    except OSError:
        memory = "? GiB"
    redis_version = subprocess.run(
        [redis_executable(), "--version"], capture_output=True, text=True, check=False
    ).stdout.split()[2:3]
    return (
        f"{model}, {os.cpu_count()} cores, {memory}, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, Redis "
        f"{(redis_version or ['?'])[0].removeprefix('v=')}"
    )


def redis_executable() -> str:
    """The redis-server the bench and schedkit's embedded mode use."""
    from schedkit.runtime.embedded import find_redis_server

    return find_redis_server()


def median_of(repeat: int, measure: Callable[[], float]) -> list[float]:
    """``measure()`` run ``repeat`` times."""
    return [measure() for _ in range(repeat)]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def future(days: int = 30) -> datetime:
    """A start time far enough ahead that nothing falls due during a benchmark."""
    return (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0)


def timetable_rows(count: int, start: datetime) -> Iterator[tuple[str, str, str, str]]:
    """(task, run_at, args, kwargs) of a garden's timetable: 1,000 plants, one run a second."""
    for i in range(count):
        run_at = (start + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
        yield "water_plants", run_at, f'["plant-{i % 1000}"]', f'{{"litres": {i % 7 + 1}}}'


def write_timetable(path: Path, count: int, start: datetime) -> Path:
    """A timetable CSV of ``count`` rows, as a user would hand to the scheduler."""
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["task", "run_at", "args", "kwargs"])
        writer.writerows(timetable_rows(count, start))
    return path


def child_pids(pid: int) -> list[int]:
    """The processes ``pid`` started (a prefork worker's pool), none if it is gone."""
    try:
        return [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def rss_bytes(pid: int, *, children: bool = True) -> int:
    """Resident memory of a process (and its children, for prefork workers)."""
    pids = [pid, *(child_pids(pid) if children else [])]
    total = 0
    for one in pids:
        try:
            for line in Path(f"/proc/{one}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until true, or raise naming ``what``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)  # polling a process that has no readiness signal
