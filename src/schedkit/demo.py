"""The demo Celery app ``schedkit up`` runs when no ``--app`` is given.

Every task leaves a trace you can see: a line in the worker's log and an entry in the
``{prefix}:demo:runs`` Redis list of the store (read it with :func:`runs`), besides its result.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from celery import Celery, Task

from schedkit.dispatch.hook import install
from schedkit.model import utc_now
from schedkit.store.store import Store

log = logging.getLogger(__name__)

app = Celery("schedkit.demo")
app.conf.update(broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)
store_handle = install(app)


def _runs_key(store: Store) -> str:
    return f"{store.keys.prefix}:demo:runs"


def _trace(task: Task[Any, Any], **details: Any) -> None:
    store = store_handle.get()
    entry = {"task": task.name, "id": task.request.id, "at": utc_now().isoformat(), **details}
    store.redis.rpush(_runs_key(store), json.dumps(entry))
    log.info("demo %s ran: %s", task.name, details)


def runs(store: Store) -> list[dict[str, Any]]:
    """Every demo task run recorded in ``store``, oldest first."""
    return [json.loads(entry) for entry in store.redis.lrange(_runs_key(store), 0, -1)]


@app.task(bind=True, name="water_plants")
def water_plants(self: Task[Any, Any], plant: str, litres: float = 1.0) -> str:
    """Water a plant: records the watering and says how much it got."""
    _trace(self, plant=plant, litres=litres)
    return f"watered {plant} with {litres} l"


@app.task(bind=True, name="add")
def add(self: Task[Any, Any], x: float, y: float) -> float:
    """Add two numbers."""
    _trace(self, x=x, y=y)
    return x + y


@app.task(bind=True, name="fail")
def fail(self: Task[Any, Any], message: str = "it went wrong") -> None:
    """Raise RuntimeError(message), to see a failure recorded."""
    _trace(self, message=message)
    raise RuntimeError(message)


@app.task(bind=True, name="nap")
def nap(self: Task[Any, Any], seconds: float = 1.0) -> float:
    """Sleep for a while, to see a task in STARTED."""
    _trace(self, seconds=seconds)
    time.sleep(seconds)
    return seconds


@app.task(bind=True, name="flaky", max_retries=5)
def flaky(self: Task[Any, Any], failures: int = 1) -> int:
    """Fail ``failures`` times with a retry, then succeed: shows RETRYING."""
    _trace(self, attempt=self.request.retries)
    if self.request.retries < failures:
        raise self.retry(exc=RuntimeError("not yet"), countdown=0.2)
    return int(self.request.retries)
