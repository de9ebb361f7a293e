"""The batched publisher sends what apply_async would send, and a real worker runs it.

Each message schedkit publishes is compared field by field with the one ``apply_async`` sends
for the same task id, run time and options, on a Redis broker of the test's own; the same
comparison runs against RabbitMQ in tests/test_rabbitmq.py.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from conftest import FAST
from schedkit.demo import app as demo_app
from schedkit.demo import runs
from schedkit.dispatch.broker import Broker
from schedkit.dispatch.dispatcher import message_refusal
from schedkit.dispatch.publish import Publisher
from schedkit.dispatch.transport import is_handoff
from schedkit.model import TaskState
from schedkit.store.claimed import Claimed
from schedkit.testing import local_stack

#: (task, args, kwargs, queue, priority): every option a task carries to the broker.
CASES = [
    ("add", [1, 2], {}, "", None),
    ("water_plants", ["fern"], {"litres": 2.5}, "", None),
    ("add", [3, 4], {}, "reports", None),
    ("add", [5, 6], {}, "", 7),
    ("water_plants", ["ivy"], {"litres": 0.5}, "reports", 3),
    ("not_registered_here", [], {"deep": {"list": [1, "two", None]}}, "", None),
]


def claimed(n: int, case: tuple[str, list[Any], dict[str, Any], str, int | None]) -> Claimed:
    task, args, kwargs, queue, priority = case
    run_at = datetime(2031, 5, 4, 3, 2, 1, 123000, tzinfo=UTC) + timedelta(seconds=n)
    return Claimed(f"rcase{n}", task, args, kwargs, run_at, queue, priority)


def send_as_apply_async(broker: Broker, task: Claimed) -> None:
    """What the dispatcher did before it published in batches: one apply_async per task."""
    options: dict[str, Any] = {"task_id": task.id, "eta": task.run_at, "serializer": "json"}
    if task.queue:
        options["queue"] = task.queue
    if task.priority is not None:
        options["priority"] = task.priority
    with broker.producer() as producer:
        registered = demo_app.tasks.get(task.task)
        if registered is not None:
            registered.apply_async(tuple(task.args), task.kwargs, producer=producer, **options)
        else:
            demo_app.send_task(task.task, task.args, task.kwargs, producer=producer, **options)


def popped(client: redis.Redis) -> dict[str, Any]:
    """The one message waiting in any queue list of the broker, removed."""
    lists = [k for k in client.keys("*") if client.type(k) == b"list"]
    found = [(k, client.rpop(k)) for k in lists if client.llen(k)]
    assert len(found) == 1, found
    key, raw = found[0]
    message: dict[str, Any] = json.loads(raw)
    message["list"] = key.decode()
    return message


def comparable(message: dict[str, Any]) -> dict[str, Any]:
    """A message without the field kombu makes unique per publish (the delivery tag)."""
    properties = dict(message["properties"])
    assert properties.pop("delivery_tag")
    body = json.loads(base64.b64decode(message["body"]))
    return {**message, "body": body, "properties": properties}


@pytest.mark.parametrize("n", range(len(CASES)))
def test_a_published_message_equals_what_apply_async_sends(redis_url: str, n: int) -> None:
    broker_url = redis_url.rsplit("/", 1)[0] + "/1"
    broker = Broker(demo_app, broker_url)
    client = redis.Redis.from_url(broker_url)
    try:
        task = claimed(n, CASES[n])
        send_as_apply_async(broker, task)
        theirs_sent = popped(client)
        theirs = comparable(theirs_sent)
        outcome = Publisher(demo_app, broker).publish([task], message_refusal)
        assert outcome.reasons == [None]
        assert outcome.error is None
        ours_sent = popped(client)
        ours = comparable(ours_sent)
    finally:
        client.close()
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
        "group",
        "shadow",
        "origin",
    ):
        assert ours["headers"][name] == theirs["headers"][name], name
    assert ours["headers"] == theirs["headers"]
    assert ours["properties"]["priority"] == theirs["properties"]["priority"]
    assert ours["properties"]["delivery_info"] == theirs["properties"]["delivery_info"]
    assert ours["properties"] == theirs["properties"]
    assert ours["list"] == theirs["list"]  # the queue, and its priority sub-queue
    assert ours["body"] == theirs["body"]
    assert ours == theirs
    assert ours["headers"]["id"] == task.id
    assert ours["headers"]["task"] == task.task
    # The one difference: a tag that tells the worker's transport it is a hand-off.
    assert is_handoff(ours_sent["properties"]["delivery_tag"])
    assert not is_handoff(theirs_sent["properties"]["delivery_tag"])


def test_many_messages_of_one_template_each_carry_their_own_id_eta_and_arguments(
    redis_url: str,
) -> None:
    broker_url = redis_url.rsplit("/", 1)[0] + "/1"
    broker = Broker(demo_app, broker_url)
    client = redis.Redis.from_url(broker_url)
    tasks = [claimed(n, ("add", [n, n], {}, "", None)) for n in range(50)]
    try:
        outcome = Publisher(demo_app, broker).publish(tasks, message_refusal)
        raws = client.lrange("celery", 0, -1)
    finally:
        client.close()
        broker.close()
    assert outcome.reasons == [None] * 50
    seen = {}
    for raw in raws:
        message = json.loads(raw)
        body = json.loads(base64.b64decode(message["body"]))
        seen[message["headers"]["id"]] = (message["headers"]["eta"], body[0])
    assert seen == {t.id: (t.run_at.isoformat(), t.args) for t in tasks}


def test_a_real_worker_runs_published_tasks_with_every_option(tmp_path: Path) -> None:
    allow = "celery,reports"
    with local_stack(data_dir=tmp_path / "data", allow_queues=allow, **FAST) as stack:
        assert stack.store is not None
        with stack.client() as client:
            at = timedelta(seconds=1)
            sent = {
                client.schedule("add", 1, 2, run_at=at).id: {"x": 1, "y": 2},
                client.schedule("add", 3, 4, run_at=at, queue="reports").id: {"x": 3, "y": 4},
                client.schedule("add", 5, 6, run_at=at, priority=7).id: {"x": 5, "y": 6},
                client.schedule(
                    "add", 7, 8, run_at=at, expires_after=timedelta(minutes=5)
                ).id: {"x": 7, "y": 8},
                client.schedule(
                    "water_plants", "fern", run_at=at, kwargs={"litres": 2.5}, queue="reports",
                    priority=2, expires_after=timedelta(minutes=5),
                ).id: {"plant": "fern", "litres": 2.5},
            }  # fmt: skip
            for task_id in sent:
                done = client.wait_for(task_id, ["SUCCEEDED", "FAILED"], timeout=60)
                assert done.state is TaskState.SUCCEEDED, done.error
        ran = runs(stack.store)
        assert Counter(str(r["id"]) for r in ran) == dict.fromkeys(sent, 1)
        for entry in ran:
            expected = sent[str(entry["id"])]
            assert {k: entry[k] for k in expected} == expected
