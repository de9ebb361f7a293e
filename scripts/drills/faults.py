"""Fault drills: inject a crash or an outage into a real local stack and count what survived.

Each drill starts its own Redis (append-only), server, dispatcher and worker as real processes,
breaks one of them, and returns :class:`Counts`: accepted, executed, duplicates and lost,
plus what it measured on the way. ``scripts/faults`` runs them at full size; the test suite
runs them small. A drill never judges; the caller asserts (tests) or prints (the script).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from relay import SilentRelay

from schedkit.client.client import Client
from schedkit.demo import runs
from schedkit.errors import SchedkitError
from schedkit.model import FINAL_STATES, TaskSpec, TaskState, task_id_for
from schedkit.runtime.embedded import RedisServer, free_port
from schedkit.runtime.stack import Stack, local_settings
from schedkit.settings import Settings, broker_url_beside
from schedkit.store.store import Store
from schedkit.timetable.check import load_timetable
from schedkit.timetable.options import TimetableOptions

FAST: dict[str, Any] = {"handoff_window": 3.0, "poll_interval": 0.2, "claim_lease": 5.0}
# The partition drill's store timeout: short, so its calls fail quickly (default 10 s).
PARTITION_STORE_TIMEOUT = 1.0
# Settings a developer may have exported that must not reach the drill's processes.
_PRIVATE_ENV = ("SCHEDKIT_TOKEN", "SCHEDKIT_TOKEN_FILE", "SCHEDKIT_TLS_CA", "SCHEDKIT_TLS_CERT")


@dataclass
class Counts:
    """What a drill found: every accepted task once, none lost, none run twice."""

    drill: str
    accepted: int = 0
    executed: int | None = None  # None: the drill does not run tasks
    duplicates: int = 0
    lost: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """One line for a terminal."""
        executed = "-" if self.executed is None else f"{self.executed:,}"
        notes = "  ".join(f"{k}={v}" for k, v in self.notes.items())
        return (
            f"{self.drill:<16} accepted={self.accepted:,} executed={executed} "
            f"duplicates={self.duplicates:,} lost={self.lost:,}  {notes}"
        )


def clean_env() -> dict[str, str]:
    """The environment for child processes, without a developer's secrets or TLS files."""
    return {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}


def poll(check: Callable[[], bool], timeout: float, what: str, every: float = 0.05) -> None:
    """Wait until ``check()`` is true; TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)  # polling real processes that have no readiness signal


class ServerProcess:
    """``schedkit serve`` as a child process on a fixed port, to SIGKILL and start again."""

    def __init__(self, store_url: str, log: Path, port: int = 0) -> None:
        self.store_url = store_url
        self.port = port or free_port()
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """host:port of the server."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ServerProcess:
        """Start the server and wait until it accepts a connection."""
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "schedkit", "serve", "--store", self.store_url,
                 "--listen", self.address],
                stdout=out, stderr=subprocess.STDOUT, env=clean_env(),
            )  # fmt: skip
        with Client.connect(self.address, wait_ready=timeout, token=""):
            pass
        return self

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def peak_rss_mb(self) -> float:
        """The server's peak resident memory so far (VmHWM), in MB."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0


def write_timetable(path: Path, rows: int, *, offset: int = 0) -> Path:
    """A CSV of ``rows`` distinct ``add`` runs tomorrow, spread over a day."""
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    with open(path, "w") as out:
        out.write("task,run_at,args\n")
        for i in range(offset, offset + rows):
            moment = start + timedelta(seconds=i % 86400)
            out.write(f'add,{moment:%Y-%m-%dT%H:%M:%SZ},"[{i}, 1]"\n')
    return path


def scheduler_command(table: Path, server: str, source: str, retry_for: str = "120s") -> list[str]:
    """The scheduler as a user runs it."""
    return [sys.executable, "-m", "schedkit.scheduler", str(table), "--server", server,
            "--source", source, "-q", "--retry-for", retry_for]  # fmt: skip


def timetable_census(store: Store, tables: dict[str, Path]) -> tuple[int, int, int]:
    """(accepted, duplicates, lost) of the timetables' runs in ``store``, by task id."""
    expected: set[str] = set()
    for source, table in tables.items():
        expected |= {
            task_id_for(k)
            for k in load_timetable(table, TimetableOptions(source=source)).runs["key"]
        }
    present = set(store.redis.zrange(store.keys.state("SCHEDULED"), 0, -1))
    return len(expected & present), len(present - expected), len(expected - present)


def execution_census(store: Store, ids: list[str]) -> tuple[int, int, int]:
    """(executed, duplicates, lost) of ``ids`` from the demo app's run log."""
    ran = Counter(str(entry["id"]) for entry in runs(store))
    executed = sum(ran[i] for i in ids)
    duplicates = sum(ran[i] - 1 for i in ids if ran[i] > 1)
    lost = sum(1 for i in ids if ran[i] == 0)
    return executed, duplicates, lost


@contextlib.contextmanager
def workdir(base: Path | None) -> Iterator[Path]:
    """``base`` if given, else a temporary folder removed afterwards."""
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
        yield base
        return
    with tempfile.TemporaryDirectory(prefix="schedkit-faults-") as tmp:
        yield Path(tmp)


# -- the drills -----------------------------------------------------------------------------


def server_killed_mid_stream(rows: int, base: Path | None = None) -> Counts:
    """SIGKILL the server while the scheduler streams a timetable; restart it; re-run."""
    with workdir(base) as work, RedisServer(data_dir=work / "redis") as redis_server:
        store = Store.from_url(redis_server.url)
        server = ServerProcess(redis_server.url, work / "server.log").start()
        table = write_timetable(work / "kill.csv", rows)
        sending, watch = _start_scheduler(table, server.address, "kill")
        try:
            poll(lambda: store.count(TaskState.SCHEDULED) > 0, 120, "the stream to start", 0.002)
            at_kill = store.count(TaskState.SCHEDULED)
            server.kill()
            server.start()
            sending.wait(timeout=600)
            err = watch.join()
            again = subprocess.run(
                scheduler_command(table, server.address, "kill"),
                capture_output=True, text=True, env=clean_env(), timeout=600,
            )  # fmt: skip
            accepted, duplicates, lost = timetable_census(store, {"kill": table})
        finally:
            if sending.poll() is None:
                sending.kill()
            server.stop()
            store.close()
    return Counts(
        "server-kill",
        accepted,
        None,
        duplicates,
        lost,
        {
            "stored_at_kill": at_kill,
            "first_exit": sending.returncode,
            "rerun_exit": again.returncode,
            "rerun_created": _summary_count(again.stdout, "created"),
            "retried": "retrying" in err,
            "killed_mid_stream": 0 < at_kill < rows,
        },
    )


def _summary_count(output: str, label: str) -> int:
    for line in output.splitlines():
        if line.strip().startswith(label):
            return int(line.split()[-1].replace(",", ""))
    return -1


def _schedule(client: Client, specs: list[TaskSpec]) -> list[str]:
    results = list(client.schedule_many(specs, batch_size=1000))
    return [r.id for r in results if r.error is None]


def _wait_final(store: Store, count: int, timeout: float) -> None:
    poll(
        lambda: sum(store.count(s) for s in FINAL_STATES) >= count,
        timeout,
        f"{count} tasks to finish",
    )


def redis_restarted_with_parked_tasks(rows: int, base: Path | None = None) -> Counts:
    """Park ``rows`` tasks, restart Redis (AOF) under the running stack; all there, all run."""
    with workdir(base) as work, RedisServer(data_dir=work / "redis") as redis_server:
        settings = local_settings(store_url=redis_server.url, **FAST)
        with Stack(settings, worker_log=str(work / "worker.log")) as stack:
            stack.wait_for_worker(60)
            assert stack.store is not None
            store = stack.store
            with Client.connect(stack.address, token="") as client:
                # Far enough ahead that nothing is handed off while Redis is down.
                start = datetime.now(UTC) + timedelta(seconds=15 + rows / 5000)
                specs = [
                    TaskSpec("add", start + timedelta(milliseconds=i % 5000), [i, 1])
                    for i in range(rows)
                ]
                ids = _schedule(client, specs)
            redis_server.stop()
            redis_server.start()
            after_restart = store.count(TaskState.SCHEDULED)
            started = time.monotonic()
            _wait_final(store, len(ids), timeout=120 + rows / 100)
            executed, duplicates, lost = execution_census(store, ids)
            succeeded = store.count(TaskState.SUCCEEDED)
    return Counts(
        "redis-restart",
        len(ids),
        executed,
        duplicates,
        lost,
        {
            "parked_after_restart": after_restart,
            "succeeded": succeeded,
            "run_s": round(time.monotonic() - started, 1),
        },
    )


def worker_killed_holding_tasks(
    rows: int, base: Path | None = None, *, broker_url: str = ""
) -> Counts:
    """SIGKILL the worker (all its processes) while it holds handed-off ETA tasks.

    With Redis as the broker the tasks come back after the visibility timeout; RabbitMQ
    requeues them as soon as the dead worker's connection closes.
    """
    # The tasks run `lead` seconds after they are scheduled: time enough to see the worker
    # hold them all (each look asks the worker and waits a second for replies) and kill it
    # before any runs. The visibility timeout exceeds the lead, so a live worker's held
    # messages are never redelivered before they run.
    lead = 8.0
    visibility = 12.0
    with workdir(base) as work:
        settings = local_settings(
            data_dir=work / "data",
            broker_url=broker_url,
            handoff_window=lead + 1,
            poll_interval=0.2,
            claim_lease=5.0,
            visibility_timeout=visibility,
        )
        with Stack(settings, worker_log=str(work / "worker.log")) as stack:
            stack.wait_for_worker(60)
            assert stack.store is not None
            assert stack.worker is not None
            store = stack.store
            with Client.connect(stack.address, token="") as client:
                run_at = datetime.now(UTC) + timedelta(seconds=lead)
                ids = _schedule(client, [TaskSpec("add", run_at, [i, 1]) for i in range(rows)])
            # Handed off, and held by the worker as ETA tasks it has not acknowledged.
            poll(lambda: store.count(TaskState.QUEUED) == len(ids), 60, "hand-off")
            poll(lambda: _held(stack) >= len(ids), 60, "the worker to take all", every=0.5)
            held = _held(stack)
            os.killpg(stack.worker.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            # The stack's supervisor starts a new worker; nothing here helps it.
            _wait_final(store, len(ids), timeout=120 + rows / 50)
            recovered_s = round(time.monotonic() - killed_at, 1)
            executed, duplicates, lost = execution_census(store, ids)
            refused = int(store.redis.hget(store.keys.stats, "refused:duplicate") or 0)
    return Counts(
        "worker-kill",
        len(ids),
        executed,
        duplicates,
        lost,
        {
            "held_at_kill": held,
            "visibility_timeout_s": visibility,
            "all_final_after_s": recovered_s,
            "duplicate_starts_refused": refused,
            "worker_restarts": stack.worker_restarts,
        },
    )


def dispatcher_killed_mid_burst(rows: int, base: Path | None = None, *, bound: int = 0) -> Counts:
    """SIGKILL a ``schedkit dispatch`` process in the middle of a burst of ``rows`` tasks due
    at one instant, with part of the burst handed off, part claimed and the rest parked (the
    in-flight bound, ``bound`` or a tenth of the burst, keeps it going); a second dispatcher
    process then finishes it. The killed one's claims come back when their lease lapses."""
    lease = 5.0
    with workdir(base) as work:
        settings = local_settings(
            data_dir=work / "data",
            handoff_window=3.0,
            poll_interval=0.2,
            claim_lease=lease,
            max_in_flight=bound or max(50, rows // 10),
        )
        with Stack(settings, worker_log=str(work / "worker.log")) as stack:
            stack.wait_for_worker(60)
            assert stack.store is not None
            assert stack.dispatcher is not None
            stack.dispatcher.stop()  # this drill's dispatchers are processes it can kill
            store = stack.store
            env = {
                **clean_env(),
                "SCHEDKIT_PREFIX": stack.settings.prefix,
                "SCHEDKIT_CLAIM_LEASE": str(lease),
                "SCHEDKIT_POLL_INTERVAL": "0.2",
                "SCHEDKIT_HANDOFF_WINDOW": "3",
                "SCHEDKIT_MAX_IN_FLIGHT": str(stack.settings.max_in_flight),
            }
            command = [sys.executable, "-m", "schedkit", "dispatch", "--store",
                       stack.settings.store_url]  # fmt: skip

            def dispatcher(name: str) -> subprocess.Popen[bytes]:
                with (work / f"{name}.log").open("wb") as log:  # the child keeps its own copy
                    return subprocess.Popen(command, env=env, stdout=log, stderr=log)

            with Client.connect(stack.address, token="") as client:
                run_at = datetime.now(UTC) + timedelta(seconds=3 + rows / 5000)
                ids = _schedule(client, [TaskSpec("add", run_at, [i, 1]) for i in range(rows)])
            first = dispatcher("dispatcher-1")
            try:
                # Killed once a fifth of the burst has run: the rest is in flight or parked.
                poll(
                    lambda: store.count(TaskState.SUCCEEDED) >= len(ids) // 5,
                    120 + rows / 50,
                    "a fifth of the burst to run",
                )
                first.kill()
                first.wait(30)
                claims_at_kill = int(store.redis.zcard(store.keys.claims))
                queued_at_kill = store.count(TaskState.QUEUED)
                parked_at_kill = store.count(TaskState.SCHEDULED)
                killed_at = time.monotonic()
                second = dispatcher("dispatcher-2")
                try:
                    _wait_final(store, len(ids), timeout=120 + rows / 50)
                finally:
                    second.terminate()
                    second.wait(30)
            finally:
                if first.poll() is None:
                    first.kill()
                    first.wait(30)
            recovered_s = round(time.monotonic() - killed_at, 1)
            executed, duplicates, lost = execution_census(store, ids)
            flight_left = store.redis.hgetall(store.keys.flight)
    return Counts(
        "dispatcher-kill",
        len(ids),
        executed,
        duplicates,
        lost,
        {
            "claimed_at_kill": claims_at_kill,
            "queued_at_kill": queued_at_kill,
            "parked_at_kill": parked_at_kill,
            "in_flight_bound": settings.max_in_flight,
            "all_final_after_s": recovered_s,
            "in_flight_left": sum(int(v) for v in flight_left.values()),
        },
    )


def _held(stack: Stack) -> int:
    assert stack.broker is not None
    return sum(len(tasks) for tasks in stack.broker.scheduled(timeout=1.0).values())


def store_down_and_back(rows: int, base: Path | None = None) -> Counts:
    """Stop the store (and broker): calls fail fast with UNAVAILABLE; start it: all recovers."""
    with workdir(base) as work, RedisServer(data_dir=work / "redis") as redis_server:
        # A worker that loses the broker drops the ETA tasks it held; the broker hands them
        # out again after the visibility timeout, kept short here so the drill is quick.
        settings = local_settings(store_url=redis_server.url, visibility_timeout=10.0, **FAST)
        return _store_outage(
            "store-down", settings, work, rows, cut=redis_server.stop, restore=redis_server.start
        )


def store_partitioned_and_healed(rows: int, base: Path | None = None) -> Counts:
    """Cut the network to the store (it stops answering, nothing is refused): calls fail
    within the store timeout and health turns NOT_SERVING; heal it: everything runs."""
    with (
        workdir(base) as work,
        RedisServer(data_dir=work / "redis") as redis_server,
        SilentRelay(("127.0.0.1", redis_server.port)) as relay,
    ):
        # The broker stays reachable: only schedkit's way to its store is cut.
        settings = local_settings(
            store_url=relay.url,
            broker_url=broker_url_beside(redis_server.url),
            store_timeout=PARTITION_STORE_TIMEOUT,
            visibility_timeout=10.0,
            **FAST,
        )
        return _store_outage(
            "store-partition", settings, work, rows, cut=relay.go_silent, restore=relay.heal
        )


def _store_outage(
    drill: str,
    settings: Settings,
    work: Path,
    rows: int,
    *,
    cut: Callable[[], object],
    restore: Callable[[], object],
) -> Counts:
    """Schedule ``rows`` tasks due in 2 s, ``cut`` the store, time how fast a call fails and
    see health turn; a scheduler started in the outage must retry; ``restore``: all runs."""
    with Stack(settings, worker_log=str(work / "worker.log")) as stack:
        stack.wait_for_worker(60)
        assert stack.store is not None
        store = stack.store
        with Client.connect(stack.address, token="") as client:
            soon = datetime.now(UTC) + timedelta(seconds=2)
            ids = _schedule(client, [TaskSpec("add", soon, [i, 1]) for i in range(rows)])
            cut()
            began = time.monotonic()
            message = ""
            try:
                client.schedule("add", 1, 1, run_at=timedelta(seconds=1))
            except SchedkitError as exc:
                message = f"{exc.code.name}: {exc.message}"
            failed_in = round(time.monotonic() - began, 3)
            down_health = _health_becomes(stack.address, "NOT_SERVING")
            table = write_timetable(work / "outage.csv", rows)
            sending, watch = _start_scheduler(table, stack.address, "outage")
            if not watch.seen.wait(60):
                raise TimeoutError("the scheduler never retried during the outage")
            restore()
            back = time.monotonic()
            up_health = _health_becomes(stack.address, "SERVING")
            after = client.schedule("add", 2, 2, run_at=timedelta(seconds=1))
            ids.append(after.id)
            sending.wait(timeout=300)
            watch.join()
        _wait_final(store, len(ids), timeout=120 + rows / 50)
        executed, duplicates, lost = execution_census(store, ids)
        accepted, extra, missing = timetable_census(store, {"outage": table})
        restarts = stack.worker_restarts
    return Counts(
        drill,
        len(ids) + accepted,
        executed,
        duplicates + extra,
        lost + missing,
        {
            "failed_in_s": failed_in,
            "status": repr(message[:90]),
            "health_down": down_health,
            "health_back": up_health,
            "scheduler_exit": sending.returncode,
            "run_s_after_back": round(time.monotonic() - back, 1),
            "worker_restarts": restarts,
        },
    )


def _health_becomes(address: str, status: str, timeout: float = 15.0) -> str:
    """Poll the server's health until it reports ``status``; return the last status seen."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        seen = ""

        def reports() -> bool:
            nonlocal seen
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            seen = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            return bool(seen == status)

        with contextlib.suppress(TimeoutError):
            poll(reports, timeout, f"health {status}", every=0.2)
    return seen


def _start_scheduler(
    table: Path, server: str, source: str
) -> tuple[subprocess.Popen[str], _StderrWatch]:
    """The scheduler CLI in a child process, with a watch for its "retrying" messages."""
    sending = subprocess.Popen(
        scheduler_command(table, server, source),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=clean_env(),
    )  # fmt: skip
    return sending, _StderrWatch(sending, "retrying")


class _StderrWatch:
    """Reads a child's stderr in a thread; ``seen`` is set once ``word`` appears."""

    def __init__(self, process: subprocess.Popen[str], word: str) -> None:
        self.seen = threading.Event()
        self.text: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process, word), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str], word: str) -> None:
        assert process.stderr is not None
        with process.stderr:
            for line in process.stderr:
                self.text.append(line)
                if word in line:
                    self.seen.set()

    def join(self) -> str:
        """All of stderr, once the child closed it."""
        self._thread.join(30)
        return "".join(self.text)


def broker_down_and_back(rows: int, base: Path | None = None) -> Counts:
    """Stop a separate broker: scheduling still succeeds; tasks wait; start it: all run."""
    with (
        workdir(base) as work,
        RedisServer(data_dir=work / "store") as store_server,
        RedisServer(data_dir=work / "broker") as broker_server,
    ):
        settings = replace(
            local_settings(store_url=store_server.url, visibility_timeout=10.0, **FAST),
            broker_url=broker_server.url,
        )
        with Stack(settings, worker_log=str(work / "worker.log")) as stack:
            stack.wait_for_worker(60)
            assert stack.store is not None
            store = stack.store
            broker_server.stop()
            with Client.connect(stack.address, token="") as client:
                soon = datetime.now(UTC) + timedelta(seconds=1)
                ids = _schedule(client, [TaskSpec("add", soon, [i, 1]) for i in range(rows)])
            # Claimed and released again each round: parked or in a claim, never handed off.
            waiting = store.count(TaskState.SCHEDULED) + int(store.redis.zcard(store.keys.claims))
            handed_while_down = store.count(TaskState.QUEUED)
            broker_server.start()
            _wait_final(store, len(ids), timeout=120 + rows / 50)
            executed, duplicates, lost = execution_census(store, ids)
    return Counts(
        "broker-down",
        len(ids),
        executed,
        duplicates,
        lost,
        {"waiting_while_down": waiting, "handed_while_down": handed_while_down},
    )


def concurrent_streams(streams: int, rows: int, base: Path | None = None) -> Counts:
    """``streams`` scheduler processes of ``rows`` rows each against one server process."""
    with workdir(base) as work, RedisServer(data_dir=work / "redis") as redis_server:
        store = Store.from_url(redis_server.url)
        server = ServerProcess(redis_server.url, work / "server.log").start()
        tables = {
            f"load{n}": write_timetable(work / f"load{n}.csv", rows, offset=n * rows)
            for n in range(streams)
        }
        idle_mb = server.peak_rss_mb()
        began = time.monotonic()
        try:
            senders = []
            for source, table in tables.items():
                with open(work / f"{source}.err", "w") as err:
                    senders.append(
                        subprocess.Popen(
                            scheduler_command(table, server.address, source),
                            stdout=subprocess.DEVNULL,
                            stderr=err,
                            env=clean_env(),
                        )
                    )
            codes = [s.wait(timeout=1800) for s in senders]
            elapsed = time.monotonic() - began
            errors = [
                (work / f"{source}.err").read_text()
                for (source, _), code in zip(tables.items(), codes, strict=True)
                if code
            ]
            peak_mb = server.peak_rss_mb()
            accepted, duplicates, lost = timetable_census(store, tables)
        finally:
            server.stop()
            store.close()
    return Counts(
        "load",
        accepted,
        None,
        duplicates,
        lost,
        {
            "streams": streams,
            "failed_streams": sum(1 for c in codes if c != 0),
            "rows_per_s": round(streams * rows / elapsed),
            "server_idle_mb": round(idle_mb),
            "server_peak_mb": round(peak_mb),
            "first_error": repr(errors[0][-200:]) if errors else "''",
        },
    )
