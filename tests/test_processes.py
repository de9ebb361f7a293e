"""`schedkit serve --processes N`: N server processes on one port, as a user runs them.

Which process answers a connection is the kernel's choice (SO_REUSEPORT), so the tests find it
out: a connection's client port is looked up among each server process's sockets.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import poll, schedkit_process
from schedkit.cli import main
from schedkit.client import Client
from schedkit.model import TaskState
from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.v1 import schedule_service_pb2_grpc as pb_grpc


@dataclass
class Servers:
    parent: subprocess.Popen[str]
    address: str
    port: int

    def children(self) -> list[psutil.Process]:
        """The server processes (not multiprocessing's helpers)."""
        return [
            child
            for child in psutil.Process(self.parent.pid).children()
            if any("spawn_main" in part for part in child.cmdline())
        ]

    def listening(self) -> set[int]:
        """Pids of the server processes with a listening socket on the shared port."""
        return {
            child.pid
            for child in self.children()
            for conn in child.net_connections("tcp")
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == self.port
        }

    def connect(self) -> tuple[grpc.Channel, int]:
        """A channel on a connection of its own, and the pid of the process that took it."""
        me = psutil.Process()
        before = self._my_ports(me)
        # A local subchannel pool: channels of one process would share one connection.
        channel = grpc.insecure_channel(
            self.address, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        check = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        (local,) = self._my_ports(me) - before
        for child in self.children():
            for conn in child.net_connections("tcp"):
                if conn.raddr and conn.raddr.port == local and conn.laddr.port == self.port:
                    return channel, child.pid
        raise AssertionError(f"no server process holds the connection from port {local}")

    def _my_ports(self, me: psutil.Process) -> set[int]:
        return {
            conn.laddr.port
            for conn in me.net_connections("tcp")
            if conn.raddr and conn.raddr.port == self.port
        }


def stop_group(process: subprocess.Popen[str]) -> None:
    """Ctrl-C to the process group, as a terminal sends it; kill what is left."""
    if process.poll() is None:
        children = psutil.Process(process.pid).children(recursive=True)
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for child in psutil.wait_procs(children, timeout=15)[1]:
            child.kill()


@pytest.fixture
def servers(redis_url: str) -> Iterator[Servers]:
    with schedkit_process(
        ["serve", "--processes", "2", "--listen", "127.0.0.1:0", "--store", redis_url],
        "schedkit server on",
        stop=stop_group,
        start_new_session=True,
    ) as (process, output):
        line = next(line for line in output if line.startswith("schedkit server on"))
        address = line.split()[3]
        assert line.rstrip().endswith("(2 processes)"), line
        yield Servers(process, address, int(address.rsplit(":", 1)[1]))


def processes_by_connection(servers: Servers, wanted: int) -> dict[int, grpc.Channel]:
    """One channel to each of ``wanted`` server processes (connections until each took one)."""
    found: dict[int, grpc.Channel] = {}
    for _ in range(64):
        channel, pid = servers.connect()
        if pid in found:
            channel.close()
        else:
            found[pid] = channel
        if len(found) == wanted:
            return found
    raise AssertionError(f"64 connections reached only {sorted(found)}")


def test_every_process_listens_on_the_one_port_and_answers(servers: Servers) -> None:
    children = servers.children()
    assert len(children) == 2
    assert servers.listening() == {child.pid for child in children}
    channels = processes_by_connection(servers, 2)
    for channel in channels.values():
        reply = pb_grpc.ScheduleServiceStub(channel).ListTaskTypes(
            pb.ListTaskTypesRequest(), timeout=10
        )
        assert "add" in {task_type.name for task_type in reply.task_types}
        channel.close()


def test_a_watch_on_one_process_sees_a_task_scheduled_through_the_other(
    servers: Servers,
) -> None:
    (watcher_pid, watching), (scheduler_pid, scheduling) = processes_by_connection(
        servers, 2
    ).items()
    assert watcher_pid != scheduler_pid
    watch = pb_grpc.ScheduleServiceStub(watching).WatchTasks(pb.WatchTasksRequest(), timeout=30)
    seen: list[str] = []
    ended: list[grpc.StatusCode] = []
    first = threading.Event()

    def follow() -> None:
        try:
            for change in watch:
                seen.append(change.task.id)
                first.set()
        except grpc.RpcError as exc:  # the cancel below ends the stream
            ended.append(exc.code())

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    stub = pb_grpc.ScheduleServiceStub(scheduling)
    spec = pb.TaskSpec(task="add")
    spec.args.extend([1, 2])
    spec.run_time.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
    # The watch opens asynchronously: schedule until a change arrives, then look for ours.
    created: list[str] = []
    while not first.is_set() and len(created) < 50:
        created.append(stub.ScheduleTask(pb.ScheduleTaskRequest(spec=spec), timeout=10).task.id)
        first.wait(0.2)
    assert first.wait(10), "the watch saw nothing scheduled through the other process"
    watch.cancel()
    reader.join(10)
    assert ended == [grpc.StatusCode.CANCELLED]
    assert seen
    assert set(seen) <= set(created)


def test_a_server_process_that_dies_is_replaced_on_the_same_port(servers: Servers) -> None:
    victim = servers.children()[0]
    victim.kill()
    victim.wait(10)

    def replaced() -> bool:
        listening = servers.listening()
        return len(listening) == 2 and victim.pid not in listening

    poll(replaced, 60, "another server process on the port")
    channel, _ = servers.connect()  # answers, whichever process takes it
    channel.close()


@pytest.mark.parametrize("count", ["0", "65", "-1"])
def test_a_process_count_out_of_range_is_refused_by_name(
    count: str, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--processes", count, "--store", redis_url]) == 2
    error = capsys.readouterr().err
    assert f"SCHEDKIT_SERVER_PROCESSES (--processes) is {count}:" in error


def test_a_process_that_cannot_start_stops_the_command_with_its_reason(redis_url: str) -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "schedkit", "serve", "--processes", "2",
            "--listen", "127.0.0.1:0", "--store", redis_url, "--app", "no_such_module:app",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("SCHEDKIT_")},
    )  # fmt: skip
    assert done.returncode == 2
    assert "a server process could not start" in done.stderr
    assert "no_such_module" in done.stderr


def test_up_with_two_server_processes_runs_a_task_and_stops_them_all(tmp_path: Path) -> None:
    with schedkit_process(
        ["up", "--processes", "2", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path)],
        "schedkit is up",
        env={"SCHEDKIT_HANDOFF_WINDOW": "3"},
        stop=stop_group,
        start_new_session=True,
    ) as (process, output):
        line = next(line for line in output if line.startswith("schedkit is up"))
        address = line.split()[5].rstrip(",")
        port = int(address.rsplit(":", 1)[1])
        servers = Servers(process, address, port)
        assert len(servers.listening()) == 2
        everything = psutil.Process(process.pid).children(recursive=True)
        with Client.connect(address) as client:
            task = client.schedule("add", 2, 3, run_at=timedelta(seconds=1))
            done = client.wait_for(task.id, ["SUCCEEDED", "FAILED"], timeout=60)
        assert done.state == TaskState.SUCCEEDED
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=60) == 0
        assert psutil.wait_procs(everything, timeout=15)[1] == []
