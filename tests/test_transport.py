"""The worker's Redis transport (dispatch/transport.py): kombu's, with one client object per
channel instead of one per command, and no ``unacked`` record for schedkit's hand-offs (the
dispatcher hands those off again itself), chosen for redis:// brokers only."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery import Celery
from kombu import Connection, Exchange, Queue
from kombu.transport import redis as kombu_redis

from schedkit.demo import app as demo_app
from schedkit.dispatch.broker import Broker
from schedkit.dispatch.dispatcher import message_refusal
from schedkit.dispatch.publish import Publisher
from schedkit.dispatch.transport import TRANSPORT, Transport, is_handoff, transport_for
from schedkit.dispatch.worker import configure_app
from schedkit.settings import Settings
from schedkit.store.claimed import Claimed

MESSAGES = 40


@pytest.fixture
def client_builds(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Every client object a kombu Redis channel builds: True for its consuming one."""
    built: list[bool] = []
    original = kombu_redis.Channel._create_client  # type: ignore[attr-defined]

    def counting(self: Any, asynchronous: bool = False) -> Any:
        built.append(asynchronous)
        return original(self, asynchronous=asynchronous)

    monkeypatch.setattr(kombu_redis.Channel, "_create_client", counting)
    return built


def consume_with_acks(url: str, transport: Any) -> list[int]:
    """Publish MESSAGES messages, take each with ack emulation and ack it; what arrived."""
    queue = Queue("t", Exchange("t", type="direct"), routing_key="t")
    got: list[int] = []
    with Connection(url, transport=transport) as connection:
        producer = connection.Producer(serializer="json")
        for n in range(MESSAGES):
            producer.publish({"n": n}, exchange=queue.exchange, routing_key="t", declare=[queue])

        def take(body: dict[str, int], message: Any) -> None:
            got.append(body["n"])
            message.ack()

        with connection.Consumer(queue, callbacks=[take], prefetch_count=5):
            while len(got) < MESSAGES:
                connection.drain_events(timeout=10)
        channel: Any = connection.default_channel
        # Ack emulation kept each message in the unacked hash until its ack removed it.
        assert channel.client.hlen(channel.unacked_key) == 0
    return got


def test_the_channel_builds_one_client_for_every_ack(
    redis_url: str, client_builds: list[bool]
) -> None:
    got = consume_with_acks(redis_url, Transport)
    assert sorted(got) == list(range(MESSAGES))
    # kombu's own channel builds one per receipt and one per ack (the control below).
    assert client_builds.count(False) <= 2, client_builds


def test_kombus_own_channel_builds_a_client_per_command(
    redis_url: str, client_builds: list[bool]
) -> None:
    """The control: what the transport saves (the count above would fail without it)."""
    consume_with_acks(redis_url, kombu_redis.Transport)
    assert client_builds.count(False) >= 2 * MESSAGES


def test_a_new_pool_gets_a_new_client(redis_url: str) -> None:
    with Connection(redis_url, transport=Transport) as connection:
        channel: Any = connection.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as again:
            assert first is again
            assert first.connection_pool is channel.pool
        channel._disconnect_pools()  # as after a fork
        with channel.conn_or_acquire() as after:
            assert after is not first
            assert after.connection_pool is channel.pool
            assert after.ping()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:1/1", TRANSPORT),
        ("rediss://127.0.0.1:1/1", None),
        ("sentinel://127.0.0.1:1/1", None),
        ("amqp://guest:guest@127.0.0.1:5672//", None),
    ],
)
def test_only_redis_urls_get_the_transport(url: str, expected: str | None) -> None:
    assert transport_for(url) == expected


def test_the_worker_app_uses_it_unless_the_app_chose_its_own(redis_url: str) -> None:
    settings = Settings(store_url=redis_url)
    app = configure_app(Celery("t", set_as_current=False), settings)
    assert app.conf.broker_transport == TRANSPORT
    with app.connection_for_read() as connection:
        assert isinstance(connection.default_channel, Transport.Channel)

    own = Celery("t", set_as_current=False)
    own.conf.broker_transport = "redis"
    assert configure_app(own, settings).conf.broker_transport == "redis"


QUEUE = Queue("celery", Exchange("celery", type="direct"), routing_key="celery")


def publish_two(url: str) -> None:
    """One task through schedkit's hand-off publisher, one through plain ``apply_async``."""
    broker = Broker(demo_app, url)
    try:
        run_at = datetime.now(UTC) + timedelta(hours=1)
        handoff = Claimed("handed", "add", [1, 2], {}, run_at, "", None)
        assert Publisher(demo_app, broker).publish([handoff], message_refusal).error is None
        with broker.producer() as producer:
            demo_app.tasks["add"].apply_async((3, 4), task_id="other", producer=producer)
    finally:
        broker.close()


def take_both(connection: Connection) -> dict[str, Any]:
    """Both messages, received with ack emulation and not acknowledged, by task id."""
    got: dict[str, Any] = {}

    def take(body: Any, message: Any) -> None:
        got[message.headers["id"]] = message

    consumer = connection.Consumer(QUEUE, callbacks=[take], accept=["json"])
    consumer.consume()
    while len(got) < 2:
        connection.drain_events(timeout=10)
    assert is_handoff(got["handed"].delivery_tag)
    assert not is_handoff(got["other"].delivery_tag)
    return got


def test_a_handoff_is_held_in_memory_and_any_other_message_in_the_unacked_hash(
    redis_url: str,
) -> None:
    with Connection(redis_url, transport=Transport) as connection:
        channel: Any = connection.default_channel
        publish_two(redis_url)
        got = take_both(connection)
        recorded = {tag.decode() for tag in channel.client.hkeys(channel.unacked_key)}
        assert recorded == {got["other"].delivery_tag}
        assert channel.client.zcard(channel.unacked_index_key) == 1
        for message in got.values():
            message.ack()
        assert channel.client.hlen(channel.unacked_key) == 0
        assert channel.client.llen("celery") == 0


def test_a_closing_worker_puts_back_what_it_had_not_acknowledged(redis_url: str) -> None:
    """kombu restores unacknowledged messages when a consumer's channel closes (a warm
    shutdown): the hand-off from memory, the other from the unacked hash; an acknowledged
    hand-off is not put back."""
    publish_two(redis_url)
    with Connection(redis_url, transport=Transport) as connection:
        take_both(connection)
    with Connection(redis_url, transport=Transport) as connection:
        again = take_both(connection)
        again["handed"].ack()
    with Connection(redis_url, transport=Transport) as connection:
        channel: Any = connection.default_channel
        waiting = [json.loads(raw) for raw in channel.client.lrange("celery", 0, -1)]
        assert [m["headers"]["id"] for m in waiting] == ["other"]


def test_a_handoff_rejected_to_the_queue_is_received_again(redis_url: str) -> None:
    publish_two(redis_url)
    with Connection(redis_url, transport=Transport) as connection:
        got = take_both(connection)
        got["handed"].reject(requeue=True)
        got["other"].ack()
        again: list[Any] = []
        with connection.Consumer(QUEUE, callbacks=[lambda body, m: again.append(m)]):
            connection.drain_events(timeout=10)
        assert [m.delivery_tag for m in again] == [got["handed"].delivery_tag]
        assert again[0].delivery_info["redelivered"]
        again[0].ack()
