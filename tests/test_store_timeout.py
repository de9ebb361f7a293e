"""A store that stops answering (a network partition, a hung Redis) fails calls within the
store timeout, instead of holding them until TCP gives up, and health follows it.

The partition is a TCP relay between schedkit and a real Redis that can go silent: it keeps
every connection open and passes nothing on, which is what a dropped network looks like from
either end. (A real partition needs firewall rules, which this sandbox does not offer.)
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import FAST
from schedkit.client import Client
from schedkit.errors import Unavailable
from schedkit.faults import poll
from schedkit.model import TaskState
from schedkit.stack import Stack, local_settings
from schedkit.store import MAX_BLOCK_SECONDS, Store

TIMEOUT = 0.5


class SilentRelay:
    """Relays TCP to ``upstream`` until :meth:`go_silent`; then passes nothing on and opens
    nothing upstream, but keeps every connection open, until :meth:`heal`."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.silent = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def go_silent(self) -> None:
        self.silent.set()

    def heal(self) -> None:
        self.silent.clear()

    def close(self) -> None:
        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                downstream, _ = self._listener.accept()
                self._sockets.append(downstream)
                if self.silent.is_set():
                    continue  # held open, never answered
                upstream = socket.create_connection(self.upstream)
                self._sockets.append(upstream)
                for source, target in ((downstream, upstream), (upstream, downstream)):
                    threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if not self.silent.is_set():
                    target.sendall(data)
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def relay(redis_url: str) -> Iterator[SilentRelay]:
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    made = SilentRelay((host, int(port)))
    yield made
    made.close()


def finishes(call: Callable[[], Any], within: float) -> Any:
    """Run ``call``; fail the test, instead of hanging it, if it has not returned in time."""
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(call).result(timeout=within)
    finally:
        pool.shutdown(wait=False)


def test_a_silent_store_fails_calls_within_its_timeout_then_recovers(
    relay: SilentRelay,
) -> None:
    store = Store.from_url(relay.url, timeout=TIMEOUT)
    store.ping()
    assert store.count(TaskState.SCHEDULED) == 0

    relay.go_silent()
    for call in (
        store.ping,
        lambda: store.count(TaskState.SCHEDULED),
        # Blocking reads get the longest block on top of the timeout, and no more.
        lambda: store.events("0-0", block_ms=60_000),
        lambda: store.wait_for_work(60.0),
    ):
        with pytest.raises(Unavailable, match="unreachable"):
            finishes(call, within=10 * (TIMEOUT + MAX_BLOCK_SECONDS))

    relay.heal()
    store.ping()
    assert store.count(TaskState.SCHEDULED) == 0
    store.close()


def _health(address: str) -> str:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def test_health_is_not_serving_while_the_store_is_silent(
    relay: SilentRelay, redis_url: str
) -> None:
    settings = local_settings(
        store_url=relay.url, broker_url=redis_url, store_timeout=TIMEOUT, **FAST
    )
    with Stack(settings, worker=False) as stack, Client.connect(stack.address, token="") as client:
        poll(lambda: _health(stack.address) == "SERVING", 15, "health SERVING")
        relay.go_silent()
        poll(lambda: _health(stack.address) == "NOT_SERVING", 15, "health NOT_SERVING")
        with pytest.raises(Unavailable):
            finishes(
                lambda: client.schedule("add", 1, 1, run_at=timedelta(minutes=5)),
                within=10 * (TIMEOUT + MAX_BLOCK_SECONDS),
            )
        relay.heal()
        poll(lambda: _health(stack.address) == "SERVING", 15, "health SERVING again")
        task = client.schedule("add", 2, 2, run_at=timedelta(minutes=5))
        assert client.get(task.id).state is TaskState.SCHEDULED
