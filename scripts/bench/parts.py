"""The running pieces a benchmark needs: the bench's Redis, a schedkit stack on it, the seed
API, plain Celery and RQ workers. Each is a context manager that stops what it started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import redis
from common import HERE, PYTHON, child_pids, wait_until

from schedkit.runtime.embedded import RedisServer, free_port
from schedkit.runtime.stack import Stack, local_settings
from schedkit.settings import Settings, broker_url_beside


@contextlib.contextmanager
def bench_redis(data_dir: Path) -> Iterator[RedisServer]:
    """The one Redis every contender writes to: append-only, fsync every second, as
    schedkit's embedded default (so "durable" means the same for everyone)."""
    with RedisServer(data_dir=data_dir, appendonly=True, appendfsync="everysec") as server:
        yield server


def env_for(url: str) -> dict[str, str]:
    """Environment of the fixture processes: the bench's Redis and importable fixtures."""
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH", "")]))
    return {**os.environ, "BENCH_REDIS_URL": url, "PYTHONPATH": path}


#: The cores the workers run on when the run keeps them apart (``run.py --pin-workers``);
#: None: wherever the OS puts them, beside everything else.
WORKER_CORES: set[int] | None = None


def keep_workers_apart() -> int:
    """Give the workers the last core and this process (and what it starts from now on:
    Redis, servers, dispatchers) the others, so a worker's rate is its own, not what it
    gets of cores it shares with the rest, as when workers run on machines of their own.
    Returns the workers' core."""
    global WORKER_CORES
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("--pin-workers needs at least 2 cores")
    WORKER_CORES = {cores[-1]}
    os.sched_setaffinity(0, set(cores[:-1]))
    return cores[-1]


def place_worker(pid: int) -> None:
    """Move a started worker (every thread of it and of its pool processes) onto
    :data:`WORKER_CORES`, when the run keeps workers apart."""
    if WORKER_CORES is None:
        return
    for process in [pid, *child_pids(pid)]:
        for thread in os.listdir(f"/proc/{process}/task"):
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(int(thread), WORKER_CORES)


def fresh_prefix() -> str:
    """A key prefix of its own for each run, so runs on one Redis never meet."""
    return f"sk{uuid.uuid4().hex[:6]}"


@contextlib.contextmanager
def schedkit_stack(url: str, *, worker: bool = False, **overrides: object) -> Iterator[Stack]:
    """schedkit's server and dispatcher (and optionally its worker) on the bench's Redis."""
    # The broker is left unset: another database of the bench's Redis, apart from the plain
    # Celery runs' queue in the URL's own database.
    settings: Settings = local_settings(store_url=url, prefix=fresh_prefix(), **overrides)
    stack = Stack(settings, worker=worker, worker_log=os.devnull)
    with stack:
        if worker:
            stack.wait_for_worker(120)
            assert stack.worker is not None
            place_worker(stack.worker.pid)
        yield stack


@contextlib.contextmanager
def dispatcher_processes(count: int, env: dict[str, str], *args: str) -> Iterator[None]:
    """``count`` ``schedkit dispatch`` processes with ``env`` (and ``args``), stopped on exit.
    The benchmarks give them no in-flight bound: no worker consumes, the rate measured is the
    dispatchers'."""
    processes = [
        subprocess.Popen(
            [PYTHON, "-m", "schedkit", "dispatch", *args],
            env={**os.environ, "SCHEDKIT_MAX_IN_FLIGHT": "0", **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]
    try:
        yield
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)


@contextlib.contextmanager
def server_process(url: str, *, processes: int = 1) -> Iterator[str]:
    """``schedkit serve`` (with ``--processes``) in a process of its own on the bench's
    Redis; yields its address.

    For latency: a client in the bench process would otherwise share one interpreter (and
    its GIL) with the server it measures, which no deployment does.
    """
    address = f"127.0.0.1:{free_port()}"
    command = [PYTHON, "-m", "schedkit", "serve", "--store", url, "--listen", address]
    process = subprocess.Popen(
        [*command, "--processes", str(processes)],
        env={**os.environ, "SCHEDKIT_PREFIX": fresh_prefix()},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # printed once the server listens
        if not line.startswith("schedkit server on"):
            raise RuntimeError(f"schedkit serve did not start: {line!r}")
        yield address
    finally:
        process.terminate()
        process.wait(30)


@contextlib.contextmanager
def seed_api(url: str) -> Iterator[str]:
    """The seed design's Flask API in a process of its own; yields its endpoint URL."""
    port = free_port()
    process = subprocess.Popen(
        [PYTHON, str(HERE / "seed_api.py"), str(port)],
        env=env_for(url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}/api/schedule_task"
    try:
        import requests

        def up() -> bool:
            try:
                requests.get(f"http://127.0.0.1:{port}/", timeout=0.5)
            except requests.ConnectionError:
                return False
            return True

        wait_until(up, 30, "the seed API to listen")
        yield endpoint
    finally:
        process.terminate()
        process.wait(10)


@contextlib.contextmanager
def celery_worker(url: str, *, concurrency: int = 2) -> Iterator[subprocess.Popen[bytes]]:
    """A plain Celery worker of the fixtures app (the seed design's worker)."""
    process = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "celery",
            "-A",
            "fixtures:celery",
            "worker",
            f"--concurrency={concurrency}",
            "--pool=prefork",
            "--loglevel=WARNING",
            "--without-gossip",
            "--without-mingle",
            f"--hostname=bench{uuid.uuid4().hex[:6]}@%h",
        ],
        env=env_for(url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        from fixtures import celery  # after run.py set BENCH_REDIS_URL

        def answers() -> bool:
            return bool(celery.control.ping(timeout=0.5))

        wait_until(answers, 120, "the plain Celery worker")
        place_worker(process.pid)
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # a warm shutdown with ETA tasks takes ages
        process.wait(30)


def flush_celery_queue(url: str) -> None:
    """Drop the Celery queue and its unacked messages between runs: the plain Celery runs'
    (in ``url``'s database) and schedkit's (its broker, the database beside it)."""
    for database in (url, broker_url_beside(url)):
        client = redis.Redis.from_url(database)
        client.delete("celery", "unacked", "unacked_index")
        client.close()
