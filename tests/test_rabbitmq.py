"""RabbitMQ as the broker, Redis as the store, against the RabbitMQ on 127.0.0.1:5672.

Each test module run gets a vhost of its own (made with rabbitmqctl, removed afterwards), so
nothing meets another user's queues. Skipped, with the reason, where RabbitMQ or rabbitmqctl
cannot be reached.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

import faults  # scripts/drills
from schedkit.demo import app as demo_app
from schedkit.demo import runs
from schedkit.dispatch.broker import Broker
from schedkit.dispatch.dispatcher import message_refusal
from schedkit.dispatch.publish import Publisher
from schedkit.model import TaskSpec, TaskState
from schedkit.testing import local_stack
from test_publish import CASES, claimed, send_as_apply_async

HOST, PORT = "127.0.0.1", 5672
FAST = {"handoff_window": 3.0, "poll_interval": 0.2, "claim_lease": 5.0}
pytestmark = pytest.mark.timeout(400)


def _ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(scope="module")
def amqp_url() -> Iterator[str]:
    """amqp:// URL of a vhost of this module's own; skip when RabbitMQ is not there."""
    try:
        socket.create_connection((HOST, PORT), timeout=2).close()
    except OSError as exc:
        pytest.skip(f"no RabbitMQ on {HOST}:{PORT} ({exc})")
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not installed, so the test cannot make a vhost of its own")
    vhost = f"schedkit-test-{uuid.uuid4().hex[:10]}"
    made = _ctl("add_vhost", vhost)
    if made.returncode != 0:
        pytest.skip(f"rabbitmqctl add_vhost failed: {made.stderr.strip() or made.stdout.strip()}")
    try:
        granted = _ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        assert granted.returncode == 0, granted.stderr
        url = f"amqp://guest:guest@{HOST}:{PORT}/{vhost}"
        with Connection(url, connect_timeout=5) as probe:
            probe.ensure_connection(max_retries=1)
        yield url
    finally:
        _ctl("delete_vhost", vhost)


def test_tasks_run_once_through_rabbitmq_with_redis_as_the_store(
    amqp_url: str, tmp_path: Path
) -> None:
    with local_stack(data_dir=tmp_path / "data", broker_url=amqp_url, **FAST) as stack:
        assert stack.store is not None
        with stack.client() as client:
            soon = datetime.now(UTC) + timedelta(seconds=2)
            specs = [
                TaskSpec("add", soon + timedelta(milliseconds=10 * n), [n, 1]) for n in range(30)
            ]
            ids = [r.id for r in client.schedule_many(specs)]
            later = client.schedule("add", 0, 0, run_at=timedelta(seconds=4))
            client.wait_for(later.id, ["QUEUED"], timeout=30)
            assert client.cancel(later.id).state is TaskState.CANCELLED
            states = {i: client.wait_for(i, ["SUCCEEDED", "FAILED"], timeout=60).state for i in ids}
        assert set(states.values()) == {TaskState.SUCCEEDED}
        ran = Counter(str(r["id"]) for r in runs(stack.store))
        assert {i: ran[i] for i in ids} == dict.fromkeys(ids, 1)
        assert ran[later.id] == 0
        # The messages went through RabbitMQ: Redis holds the schedule and no broker keys.
        assert stack.store.redis.exists("celery", "unacked") == 0


def test_worker_sigkilled_holding_tasks_with_rabbitmq(amqp_url: str, tmp_path: Path) -> None:
    counts = faults.worker_killed_holding_tasks(50, tmp_path, broker_url=amqp_url)
    print(counts.line())
    assert counts.notes["held_at_kill"] == 50
    assert (counts.accepted, counts.executed, counts.duplicates, counts.lost) == (50, 50, 0, 0)


def _received(amqp_url: str, queue_name: str) -> dict[str, Any]:
    """The one message waiting in ``queue_name``, taken off it, as the worker would see it."""
    with Connection(amqp_url, connect_timeout=5) as connection:
        message = connection.SimpleQueue(queue_name).get(timeout=10)
        message.ack()
        properties = dict(message.properties)
        properties.pop("delivery_tag", None)
        return {
            "headers": message.headers,
            "properties": properties,
            "content_type": message.content_type,
            "body": json.loads(message.body),
            "exchange": message.delivery_info.get("exchange"),
            "routing_key": message.delivery_info.get("routing_key"),
        }


@pytest.mark.parametrize("n", range(len(CASES)))
def test_a_published_message_equals_what_apply_async_sends_through_rabbitmq(
    amqp_url: str, n: int
) -> None:
    broker = Broker(demo_app, amqp_url)
    try:
        task = claimed(n, CASES[n])
        queue_name = task.queue or "celery"
        send_as_apply_async(broker, task)
        theirs = _received(amqp_url, queue_name)
        outcome = Publisher(demo_app, broker).publish([task], message_refusal)
        assert outcome.reasons == [None]
        assert outcome.error is None
        ours = _received(amqp_url, queue_name)
    finally:
        broker.close()
    for name in (
        "task",
        "id",
        "eta",
        "retries",
        "expires",
        "root_id",
        "parent_id",
        "argsrepr",
        "kwargsrepr",
        "timelimit",
    ):
        assert ours["headers"][name] == theirs["headers"][name], name
    assert ours["properties"].get("priority") == theirs["properties"].get("priority")
    assert (ours["exchange"], ours["routing_key"]) == (theirs["exchange"], theirs["routing_key"])
    assert ours == theirs


def test_a_batch_through_rabbitmq_is_confirmed_and_each_message_is_its_own(amqp_url: str) -> None:
    broker = Broker(demo_app, amqp_url)
    tasks = [claimed(n, ("add", [n, n], {}, "", None)) for n in range(200)]
    try:
        outcome = Publisher(demo_app, broker).publish(tasks, message_refusal)
    finally:
        broker.close()
    assert outcome.reasons == [None] * 200
    assert outcome.error is None
    seen = {}
    with Connection(amqp_url, connect_timeout=5) as connection:
        queue = connection.SimpleQueue("celery")
        for _ in range(200):
            message = queue.get(timeout=10)
            message.ack()
            seen[message.headers["id"]] = (message.headers["eta"], json.loads(message.body)[0])
    assert seen == {t.id: (t.run_at.isoformat(), t.args) for t in tasks}
