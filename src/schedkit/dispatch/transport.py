"""The worker's Redis transport: kombu's, with one client object per channel and no
``unacked`` record for schedkit's own hand-offs.

kombu's Redis channel builds a new ``redis.Redis`` object for every command it sends outside
its consuming connection (``Channel.conn_or_acquire``). With ack emulation on, that is two
per message: the ``unacked`` record on receipt and its removal on ack. Building one copies
redis-py's table of response callbacks, and in a burst it took about a sixth of the worker's
main process, the process that sets the drain rate (docs/benchmarks.md). This channel builds
the object once. Commands still take a connection from the channel's pool for each call, as
before, so sharing the object is safe; a new pool (after a fork or a reconnect) gets a new
object.

Ack emulation (kombu's, on by default) writes every message a worker takes into the broker's
``unacked`` hash and index on receipt and removes it on ack, so a worker that dies holding it
gets it back after the visibility timeout: two more round trips per message on the worker's
one consumer thread (without them a burst drained 1.45 times faster, docs/benchmarks.md).
schedkit's dispatcher already hands off again a task it handed off that never started
(``redeliver``), so the messages it publishes (their delivery tags start with
:data:`HANDOFF_TAG_PREFIX`) are kept in the worker's memory only, as with ack emulation off;
a warm shutdown still puts back those not yet acknowledged. Every other message (Celery
retries, plain ``apply_async``) keeps kombu's record.

Used for ``redis://`` brokers only (:func:`transport_for`): ``rediss://`` and Sentinel keep
kombu's own transport, whose set-up depends on the URL's scheme.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

#: What ``broker_transport`` names to use this module's transport.
TRANSPORT = "schedkit.dispatch.transport:Transport"
#: How the delivery tag of every message schedkit's hand-off publishes begins.
HANDOFF_TAG_PREFIX = "schedkit-"


def is_handoff(delivery_tag: Any) -> bool:
    """Whether ``delivery_tag`` is one schedkit's hand-off gave its message."""
    return isinstance(delivery_tag, str) and delivery_tag.startswith(HANDOFF_TAG_PREFIX)


class QoS(kombu_redis.QoS):
    """kombu's ack emulation, but schedkit's hand-offs are held in memory only."""

    def append(self, message: Any, delivery_tag: Any) -> None:
        if is_handoff(delivery_tag):
            virtual.QoS.append(self, message, delivery_tag)
        else:
            super().append(message, delivery_tag)

    def ack(self, delivery_tag: Any) -> None:
        if is_handoff(delivery_tag):
            virtual.QoS.ack(self, delivery_tag)
        else:
            super().ack(delivery_tag)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        if is_handoff(delivery_tag):
            if requeue:
                self.restore_by_tag(delivery_tag, leftmost=True)
            virtual.QoS.ack(self, delivery_tag)
        else:
            super().reject(delivery_tag, requeue)

    def restore_by_tag(self, tag: Any, client: Any = None, leftmost: bool = False) -> None:
        if not is_handoff(tag):
            super().restore_by_tag(tag, client, leftmost)
            return
        # From memory, as kombu does with ack emulation off; an acknowledged one (still listed
        # until the next flush) is not put back.
        delivered: Any = self._delivered  # kombu's stubs allow None before __init__
        acknowledged: Any = self._dirty
        message = delivered.get(tag)
        if message is None or tag in acknowledged:
            return
        info = message.delivery_info
        channel: Any = self.channel  # kombu's stubs type it as the virtual channel
        with channel.conn_or_acquire(client) as connection:
            channel._do_restore_message(
                message._raw, info["exchange"], info["routing_key"], connection, leftmost
            )


class Channel(kombu_redis.Channel):
    """kombu's Redis channel; its own commands share one client object, and with ack
    emulation on (kombu swaps in its plain QoS when it is off) :class:`QoS` keeps it."""

    QoS = QoS
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
