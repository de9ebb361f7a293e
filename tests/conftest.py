"""Fixtures: real Redis servers on free ports, a real worker, real gRPC servers on port 0."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from schedkit.client.client import Client
from schedkit.demo import app as demo_app
from schedkit.dispatch.registry import TaskRegistry
from schedkit.model import Outcome, ScheduleResult, TaskRows, TaskSpec
from schedkit.service.schedules import Schedules
from schedkit.service.servicer import SPEC_FIELDS
from schedkit.settings import Settings
from schedkit.store.store import Store
from schedkit.testing import LocalStack, interrupt_on_sigterm, local_stack, redis_server
from schedkit.v1 import schedule_service_pb2_grpc as pb_grpc

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def pytest_configure(config: pytest.Config) -> None:
    """A SIGTERM (a CI timeout, ``kill``, an IDE's stop button) ends the run as Ctrl-C does,
    tearing fixtures down, so no Redis server or worker a test started outlives the run."""
    interrupt_on_sigterm()


# Small windows keep the suite quick; the logic is the same at the default 30 s.
FAST = {"handoff_window": 3.0, "poll_interval": 0.2, "claim_lease": 5.0}


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """One embedded stack shared by the tests that only add their own tasks."""
    ARTIFACTS.mkdir(exist_ok=True)
    with local_stack(
        data_dir=tmp_path_factory.mktemp("stack"),
        worker_log=str(ARTIFACTS / "worker.log"),
        **FAST,
    ) as running:
        yield running


@pytest.fixture
def client(stack: LocalStack) -> Iterator[Client]:
    """A client of the shared stack."""
    with stack.client() as connected:
        yield connected


@pytest.fixture
def stub(stack: LocalStack) -> Iterator[pb_grpc.ScheduleServiceStub]:
    """A bare generated stub on the shared stack, for what the Client does not send."""
    with grpc.insecure_channel(stack.address) as channel:
        yield pb_grpc.ScheduleServiceStub(channel)


class _HungService(pb_grpc.ScheduleServiceServicer):
    """Takes a ScheduleTasks stream and never answers: a hung server. A servicer of the
    test's own, because a real schedkit server cannot be made to hang on purpose."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release

    def ScheduleTasks(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        next(request_iterator)
        self.release.wait(60)
        return iter(())


@pytest.fixture
def hung_server() -> Iterator[str]:
    """Address of a real gRPC server on a free port whose ScheduleTasks never answers."""
    release = threading.Event()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_ScheduleServiceServicer_to_server(_HungService(release), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    release.set()
    server.stop(0).wait()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A fresh, empty Redis of this test's own (no persistence)."""
    with redis_server(appendonly=False) as server:
        yield server.url


@pytest.fixture
def store(redis_url: str) -> Iterator[Store]:
    """A store on this test's own Redis."""
    opened = Store.from_url(redis_url)
    yield opened
    opened.close()


@pytest.fixture
def settings(redis_url: str) -> Settings:
    """Settings pointing at this test's own Redis as store and broker."""
    return Settings(store_url=redis_url, **FAST)  # type: ignore[arg-type]


@pytest.fixture
def schedules(store: Store, settings: Settings) -> Schedules:
    """The use case over the demo app's tasks and this test's store (no worker)."""
    return Schedules(store, TaskRegistry(demo_app), settings)


def schedule_specs(
    schedules: Schedules, specs: Sequence[TaskSpec], *, now: datetime | None = None
) -> list[ScheduleResult]:
    """Schedule ``specs`` as the server's ScheduleTasks does: prepare the batch, then store it."""
    prepared = schedules.prepare_rows(TaskRows.of_specs(specs), fields=SPEC_FIELDS, now=now)
    return schedules.store_prepared(prepared)


def schedule_ids(
    schedules: Schedules, specs: Sequence[TaskSpec], *, now: datetime | None = None
) -> list[str]:
    """The ids of ``specs``, scheduled through :func:`schedule_specs`; each must be created."""
    results = schedule_specs(schedules, specs, now=now)
    assert [r.outcome for r in results] == [Outcome.CREATED] * len(specs), results
    return [r.id for r in results]


def violations(error: grpc.RpcError) -> dict[str, str]:
    """The field violations (field: description) a failed call's BadRequest detail carries,
    decoded here rather than by the client under test."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    found: dict[str, str] = {}
    for detail in status.details if status is not None else ():
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            found.update({v.field: v.description for v in bad_request.field_violations})
    return found


def terminate(process: subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL if it does not end within 30 s."""
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def schedkit_process(
    args: Sequence[str],
    ready: str,
    *,
    env: Mapping[str, str] | None = None,
    stop: Callable[[subprocess.Popen[str]], None] = terminate,
    **popen: Any,
) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """``python -m schedkit ARGS`` as a child process, with none of the developer's SCHEDKIT_*
    variables (``env`` adds some); yields it and its output lines once a line starts with
    ``ready``, then ``stop``s it. Its output is read all along: a full pipe would block its
    logging."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDKIT_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "schedkit", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**environ, **(env or {})},
        **popen,
    )
    started = threading.Event()
    output: list[str] = []

    def drain() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if line.startswith(ready):
                started.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert started.wait(60), "".join(output)
        yield process, output
    finally:
        stop(process)
        reader.join(10)  # the pipe closes once every child that inherited it is gone
        assert process.stdout is not None
        process.stdout.close()
    assert not reader.is_alive(), f"a child of `schedkit {args[0]}` still holds its output"


def poll(check: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Wait until ``check()`` is true, asking every 50 ms; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Clock:
    """A clock the test moves: parts that take ``clock=`` read it instead of the time."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now
