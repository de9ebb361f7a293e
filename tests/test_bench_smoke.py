"""The benchmarks under scripts/bench run end to end and produce numbers (tiny sizes).

Times are never asserted here: only that every measure ran, for schedkit and for what it is
compared with, and printed a finite number. The full bench is ``scripts/bench/run.py``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("flask", reason="the bench needs the dev extra (flask, requests, rq)")
pytest.importorskip("rq", reason="the bench needs the dev extra (flask, requests, rq)")


ON_CLUSTER = "schedkit on a Redis Cluster (3 primaries)"


@pytest.mark.timeout(240)
def test_every_benchmark_runs_and_yields_numbers(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench" / "run.py"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=230,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert "| measure | who | median |" in run.stdout
    results = json.loads(out.read_text())["results"]
    seen = {(r["measure"], r["who"]) for r in results}
    expected = {
        ("ingest", "schedkit scheduler CLI"),
        ("ingest", "seed: Flask + requests.post"),
        ("ingest", "bare apply_async(eta) loop"),
        ("ingest", "RQ enqueue_at"),
        ("unary p50, 1 client", "schedkit ScheduleTask"),
        ("unary p99, 8 clients", "schedkit ScheduleTask"),
        ("unary p50, 1 client", "seed: Flask + requests.post"),
        ("hand-off before run time", "schedkit dispatcher"),
        ("start lateness p99", "schedkit"),
        ("start lateness p99", "plain Celery worker, ETA"),
        ("store memory", "schedkit (Redis)"),
        ("worker RSS growth", "schedkit worker"),
        ("worker RSS growth", "plain Celery worker, ETA"),
        ("query: first page (100)", "schedkit ListTasks"),
        ("unary calls/s, 32 clients", "one server process"),
        ("one Redis vs cluster: ingest", "schedkit on a Redis Cluster (3 primaries), 3 partitions"),
        ("one Redis vs cluster: ingest", "schedkit on a Redis Cluster (3 primaries), 1 partition"),
        (
            "one Redis vs cluster: hand-off",
            "schedkit on a Redis Cluster (3 primaries), 3 partitions",
        ),
        (
            "one Redis vs cluster: hand-off",
            "schedkit on a Redis Cluster (3 primaries), 1 partition",
        ),
        ("busiest Redis CPU per task: ingest", "schedkit on one Redis"),
        ("one Redis vs cluster: ingest", "schedkit on one Redis"),
        ("unary calls/s, 32 clients", "schedkit serve --processes 2"),
        ("hand-off rate", "schedkit, 2 dispatcher processes"),
        ("hand-off rate", "bare apply_async(eta) loop"),
        ("burst: drain rate", "schedkit"),
        ("burst: drain rate", "schedkit, SCHEDKIT_WORKER_ACK_EMULATION=0"),
        ("burst: drain rate", "plain Celery worker, ETA"),
        ("burst: drain rate", "plain Celery worker, the burst queued"),
        ("burst: worker start rate (metrics)", "schedkit"),
        ("claim call, longest (quiet)", "schedkit"),
        ("claim call, longest (during an append-only file rewrite)", "schedkit"),
    }
    assert expected <= seen, expected - seen
    for result in results:
        assert result["values"], result
        assert all(math.isfinite(v) for v in result["values"]), result


BENCH = ROOT / "scripts" / "bench"

# A process with a second thread and a child process, as a prefork worker has.
WORKER_LIKE = """
import subprocess, sys, threading, time
threading.Thread(target=time.sleep, args=(120,), daemon=True).start()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
time.sleep(120)
"""


def _threads(pid: int) -> list[int]:
    return [int(t) for t in os.listdir(f"/proc/{pid}/task")]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="keeping workers apart needs 2 cores")
def test_a_placed_worker_runs_every_thread_of_it_and_its_pool_on_the_workers_core(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    import parts

    core = max(os.sched_getaffinity(0))
    monkeypatch.setattr(parts, "WORKER_CORES", {core})
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER_LIKE], stdout=subprocess.PIPE, text=True
    )
    assert worker.stdout is not None
    with worker.stdout:
        child = int(worker.stdout.readline())
    try:
        assert len(_threads(worker.pid)) >= 2
        parts.place_worker(worker.pid)
        for pid in (worker.pid, child):
            for thread in _threads(pid):
                assert os.sched_getaffinity(thread) == {core}, (pid, thread)
        assert os.sched_getaffinity(0) != {core}  # the caller stays where it was
    finally:
        os.kill(child, signal.SIGKILL)
        worker.kill()
        worker.wait()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="keeping workers apart needs 2 cores")
@pytest.mark.timeout(180)
def test_the_burst_runs_with_the_workers_kept_apart(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    options = ["--burst-sides", "schedkit,celery", "--pin-workers", "--json", str(out)]
    run = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--smoke", "--only", "burst", *options],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads(out.read_text())
    last_core = max(os.sched_getaffinity(0))
    assert report["machine"].endswith(f"workers alone on core {last_core}"), report["machine"]
    seen = {(r["measure"], r["who"]) for r in report["results"]}
    assert {
        ("burst: drain rate", "schedkit"),
        ("burst: drain rate", "plain Celery worker, ETA"),
    } <= seen
