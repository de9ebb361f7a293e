"""No caller can starve the server by holding streams, with or without a token.

Each test reproduces a finding of the abuse review over a real server: idle health watches
and reflection streams (no token), idle WatchTasks and quiet ScheduleTasks streams (with a
token), large unauthenticated messages. The hostile side runs in a process of its own
(tests/hold_streams.py), as a real attacker would.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import schedkit_process
from schedkit.client.client import Client
from schedkit.errors import ConfigError, ResourceExhausted
from schedkit.service.schedules import Schedules
from schedkit.service.server import Server
from schedkit.settings import Settings
from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.v1 import schedule_service_pb2_grpc as pb_grpc
from schedkit.wire.convert import datetime_to_timestamp

TOKEN = "stream-bounds-token"
HOLDER = Path(__file__).with_name("hold_streams.py")


@contextlib.contextmanager
def serving(schedules: Schedules, **changes: Any) -> Iterator[Server]:
    changes.setdefault("token", TOKEN)
    settings = replace(schedules.settings, listen="127.0.0.1:0", **changes)
    server = Server(schedules, settings=settings).start()
    try:
        yield server
    finally:
        server.stop(0)


@contextlib.contextmanager
def holding(address: str, kind: str, count: int, token: str = "") -> Iterator[dict[str, Any]]:
    """Streams held open by another process; yields its report of what opened."""
    holder = subprocess.Popen(
        [sys.executable, str(HOLDER), address, kind, str(count), token],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        assert line, f"the stream holder exited with {holder.wait(10)}"
        yield json.loads(line)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        try:
            holder.wait(30)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()


def later() -> datetime:
    return datetime.now(UTC) + timedelta(hours=1)


def answers_quickly(server: Server) -> None:
    """An authenticated ScheduleTask and a Health/Check each answer within a second."""
    with grpc.insecure_channel(server.address) as channel:
        started = time.monotonic()
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=1
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with Client.connect(server.address, token=TOKEN, timeout=1) as client:
        task = client.schedule("add", 1, 2, run_at=later())
        assert task.id
    assert time.monotonic() - started < 2


def test_a_thousand_idle_open_streams_starve_nothing(schedules: Schedules) -> None:
    with serving(schedules) as server, holding(server.address, "open", 1000) as held:
        # Health watches and reflection streams each stay under their bound; past it they
        # are refused at once, not queued.
        assert held["open"] == 2 * Settings.max_open_streams
        assert held["refused"] == {"RESOURCE_EXHAUSTED": 1000 - 2 * Settings.max_open_streams}
        answers_quickly(server)


def test_open_streams_need_no_thread_even_past_the_old_pool(schedules: Schedules) -> None:
    """With the bound raised, 1,000 idle streams are all held and calls still answer: a
    stream is a coroutine, not one of the server's threads."""
    with (
        serving(schedules, max_open_streams=600, server_threads=4) as server,
        holding(server.address, "open", 1000) as held,
    ):
        assert held == {"open": 1000, "refused": {}}
        answers_quickly(server)


@pytest.mark.parametrize("kind", ["watch", "quiet"])
def test_authenticated_streams_are_bounded_per_caller(schedules: Schedules, kind: str) -> None:
    """40 WatchTasks, or 40 ScheduleTasks streams that go quiet, no longer take the server
    down; one caller's streams stop at its bound and the rest answer RESOURCE_EXHAUSTED."""
    with (
        serving(schedules, max_streams_per_caller=30, server_threads=4) as server,
        holding(server.address, kind, 40, TOKEN) as held,
    ):
        assert held == {"open": 30, "refused": {"RESOURCE_EXHAUSTED": 10}}
        answers_quickly(server)


def test_streams_of_all_callers_stop_at_the_total(schedules: Schedules, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("first-caller\nsecond-caller\n")
    with (
        serving(schedules, token="", token_file=str(tokens), max_streams=30) as server,
        holding(server.address, "watch", 20, "first-caller") as first,
        holding(server.address, "watch", 20, "second-caller") as second,
    ):
        assert first["open"] + second["open"] == 30
        refused = [held["refused"].get("RESOURCE_EXHAUSTED", 0) for held in (first, second)]
        assert sum(refused) == 10


def test_a_quiet_stream_ends_after_the_idle_timeout(schedules: Schedules) -> None:
    release = threading.Event()

    def requests() -> Iterator[pb.ScheduleTasksRequest]:
        yield pb.ScheduleTasksRequest(
            specs=[pb.TaskSpec(task="nap", run_time=datetime_to_timestamp(later()))]
        )
        release.wait(30)  # then silence, as a stalled or hostile client

    with (
        serving(schedules, stream_idle_timeout=0.5) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.ScheduleServiceStub(channel)
        call = stub.ScheduleTasks(
            requests(), metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=20
        )
        first = next(call)
        assert first.results[0].outcome == pb.SCHEDULE_OUTCOME_CREATED
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as ended:
            next(call)
        release.set()
    assert ended.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    assert "SCHEDKIT_STREAM_IDLE_TIMEOUT" in str(ended.value.details())  # type: ignore[attr-defined]
    assert time.monotonic() - started < 10


def test_a_stream_slot_is_given_back_when_the_stream_ends(schedules: Schedules) -> None:
    with (
        serving(schedules, max_streams_per_caller=2) as server,
        Client.connect(server.address, token=TOKEN) as client,
    ):
        held = _open_watches(client, 2)
        for _ in range(5):  # more rounds than slots: each closed watch frees its slot
            with pytest.raises(ResourceExhausted, match="SCHEDKIT_MAX_STREAMS_PER_CALLER"):
                client.watch(timeout=10)
            for watch in held:
                watch.close()
            held = _open_watches(client, 2)
        for watch in held:
            watch.close()


def _open_watches(client: Client, count: int) -> list[Any]:
    """``count`` open watches, retried while the server has not yet seen closed ones end."""
    opened: list[Any] = []
    deadline = time.monotonic() + 10
    while len(opened) < count:
        try:
            opened.append(client.watch(timeout=10))
        except ResourceExhausted:
            assert time.monotonic() < deadline, "closed watches never gave their slots back"
            time.sleep(0.05)  # the server sees a cancellation a moment after the client
    return opened


def test_unauthenticated_large_messages_are_never_read(redis_url: str) -> None:
    """8 unauthenticated 60 MB requests at once: refused without the server reading them
    (before the fix it held +372 MB)."""
    args = ["serve", "--store", redis_url, "--listen", "127.0.0.1:0", "--token", TOKEN]
    with schedkit_process(args, "schedkit server on") as (server, output):
        address = next(line for line in output if line.startswith("schedkit server on"))
        address = address.split()[-1]
        rss = psutil.Process(server.pid)
        with Client.connect(address, token=TOKEN) as client:
            client.task_types()  # warm: the server's own allocations happen before measuring
        before = rss.memory_info().rss
        request = pb.ScheduleTaskRequest(
            spec=pb.TaskSpec(task="add", run_time=datetime_to_timestamp(later()))
        )
        request.spec.labels["x"] = "y" * (60 * 1024 * 1024)
        codes: list[grpc.StatusCode] = []

        def send() -> None:
            with grpc.insecure_channel(
                address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
            ) as channel:
                try:
                    pb_grpc.ScheduleServiceStub(channel).ScheduleTask(request, timeout=30)
                except grpc.RpcError as exc:
                    codes.append(exc.code())  # type: ignore[attr-defined]

        senders = [threading.Thread(target=send) for _ in range(8)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(60)
        grown = rss.memory_info().rss - before
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 8
    assert grown < 32 * 1024 * 1024, f"server grew by {grown / 2**20:.0f} MB"


def test_two_authorization_headers_are_refused(schedules: Schedules) -> None:
    with serving(schedules) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.ScheduleServiceStub(channel)
        header = ("authorization", f"Bearer {TOKEN}")
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListTaskTypes(
                pb.ListTaskTypesRequest(), metadata=(header, ("authorization", "Bearer other"))
            )
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        assert "more than one" in str(refused.value.details())  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError):
            stub.ListTaskTypes(pb.ListTaskTypesRequest(), metadata=(header, header))
        assert stub.ListTaskTypes(pb.ListTaskTypesRequest(), metadata=(header,)).task_types


@pytest.mark.parametrize("blank", [" ", "\t", "  \n"])
def test_a_blank_token_is_a_configuration_error(blank: str) -> None:
    with pytest.raises(ConfigError, match="blank"):
        Settings(token=blank).tokens()
    with pytest.raises(ConfigError, match="blank"):
        Settings.from_env({"SCHEDKIT_TOKEN": blank}).tokens()
