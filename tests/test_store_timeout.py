"""A store that stops answering (a network partition, a hung Redis) fails each call within
the store timeout, instead of holding it until TCP gives up. The partition is a relay that
goes silent (``schedkit.relay``); the `store-partition` fault drill in test_faults.py shows
the same from the server's side: health, the scheduler's retries and every task run once.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from relay import SilentRelay

from schedkit.errors import Unavailable
from schedkit.model import TaskState
from schedkit.runtime.embedded import free_port
from schedkit.store.store import MAX_BLOCK_SECONDS, Store

TIMEOUT = 0.5


@pytest.fixture
def relay(redis_url: str) -> Iterator[SilentRelay]:
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    with SilentRelay((host, int(port))) as made:
        yield made


def finishes(call: Callable[[], Any], within: float) -> Any:
    """Run ``call``; fail the test, instead of hanging it, if it has not returned in time."""
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(call).result(timeout=within)
    finally:
        pool.shutdown(wait=False)


@pytest.mark.parametrize(
    "call",
    [
        lambda store: store.ping(),
        lambda store: store.count(TaskState.SCHEDULED),
        # A blocking read gets the longest block on top of the timeout, and no more.
        lambda store: store.wait_for_work(60.0),
    ],
    ids=["ping", "count", "wait_for_work"],
)
def test_a_silent_store_fails_a_call_within_its_timeout_then_recovers(
    relay: SilentRelay, call: Callable[[Store], Any]
) -> None:
    store = Store.from_url(relay.url, timeout=TIMEOUT)
    try:
        assert store.count(TaskState.SCHEDULED) == 0
        relay.go_silent()
        with pytest.raises(Unavailable, match="unreachable"):
            finishes(lambda: call(store), within=10 * (TIMEOUT + MAX_BLOCK_SECONDS))
        relay.heal()
        store.ping()
        assert store.count(TaskState.SCHEDULED) == 0
    finally:
        store.close()


def test_without_a_timeout_a_silent_store_holds_the_call(relay: SilentRelay) -> None:
    # What the timeout is for: 0 turns it off, and the same call is still waiting.
    store = Store.from_url(relay.url, timeout=0)
    assert store.count(TaskState.SCHEDULED) == 0
    relay.go_silent()
    pool = ThreadPoolExecutor(max_workers=1)
    pending = pool.submit(store.ping)
    with pytest.raises(TimeoutError):
        pending.result(timeout=3 * TIMEOUT)
    relay.close()  # the held connection ends, and with it the call
    with pytest.raises(Unavailable):
        pending.result(timeout=10)
    pool.shutdown(wait=False)
    store.close()


def test_the_relay_refuses_what_its_upstream_refuses_and_keeps_serving() -> None:
    with SilentRelay(("127.0.0.1", free_port())) as relay:  # nothing listens upstream
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as conn:
                assert conn.recv(1) == b""  # closed by the relay, not left hanging
