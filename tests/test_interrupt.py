"""A test run stopped with SIGTERM tears its fixtures down: no Redis server outlives it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import redis

from conftest import poll

HERE = Path(__file__).resolve().parent

HOLDING_TEST = """
import threading
from pathlib import Path


def test_holds_a_redis(redis_url):
    Path({out!r}).write_text(redis_url)
    threading.Event().wait(600)  # until the run is stopped
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_sigterm_stops_the_redis_servers_a_test_run_started(tmp_path: Path) -> None:
    out = tmp_path / "url"
    test_file = tmp_path / "test_holding.py"
    test_file.write_text(HOLDING_TEST.format(out=str(out)))
    # This suite's conftest as a plugin, so the run gets its fixtures and its signal handler.
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest"]
    run = subprocess.Popen(
        [*command, "--rootdir", str(tmp_path), str(test_file)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    redis_pid = None
    try:
        poll(
            lambda: bool(out.exists() and out.read_text()) or run.poll() is not None,
            120,
            "the test",
        )
        assert run.poll() is None, run.communicate()[0]
        client = redis.Redis.from_url(out.read_text())
        redis_pid = int(client.info("server")["process_id"])
        client.close()

        run.send_signal(signal.SIGTERM)
        output, _ = run.communicate(timeout=60)
        poll(lambda: not _alive(redis_pid), 30, f"the test's redis-server (pid {redis_pid})")
        assert "KeyboardInterrupt" in output, output
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        if redis_pid is not None and _alive(redis_pid):
            os.kill(redis_pid, signal.SIGKILL)
