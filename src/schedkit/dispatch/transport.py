"""The worker's Redis transport: kombu's, with one client object per channel.

kombu's Redis channel builds a new ``redis.Redis`` object for every command it sends outside
its consuming connection (``Channel.conn_or_acquire``). With ack emulation on, that is two
per message: the ``unacked`` record on receipt and its removal on ack. Building one copies
redis-py's table of response callbacks, and in a burst it took about a sixth of the worker's
main process, the process that sets the drain rate (docs/benchmarks.md). This channel builds
the object once. Commands still take a connection from the channel's pool for each call, as
before, so sharing the object is safe; a new pool (after a fork or a reconnect) gets a new
object.

Used for ``redis://`` brokers only (:func:`transport_for`): ``rediss://`` and Sentinel keep
kombu's own transport, whose set-up depends on the URL's scheme.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from kombu.transport import redis as kombu_redis

#: What ``broker_transport`` names to use this module's transport.
TRANSPORT = "schedkit.dispatch.transport:Transport"


class Channel(kombu_redis.Channel):
    """kombu's Redis channel; its own commands share one client object."""

    _shared_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        shared = self._shared_client
        if shared is None or shared.connection_pool is not self.pool:
            # kombu's type stubs leave out this private method of its channel.
            shared = self._shared_client = self._create_client()  # type: ignore[attr-defined]
        yield shared


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel


def transport_for(broker_url: str) -> str | None:
    """The ``broker_transport`` to set for ``broker_url``: this module's for ``redis://``,
    None (kombu chooses by scheme) for anything else."""
    return TRANSPORT if urlsplit(broker_url).scheme == "redis" else None
