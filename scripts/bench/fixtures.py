"""What users would run instead of schedkit: a plain Celery app and an RQ job function.

Imported by the bench, by the seed design's Flask API (``seed_api.py``) and by the plain
Celery and RQ workers the bench starts. The broker is ``BENCH_REDIS_URL``.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import Any

import redis
from celery import Celery, Task

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:1/0")
LATENESS_KEY = "bench:lateness"

celery = Celery("bench", broker=REDIS_URL)
celery.conf.update(
    broker_connection_retry_on_startup=True,
    task_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
)
_redis: redis.Redis | None = None


def _client() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(REDIS_URL)
    return _redis


#: When each task sent without an ETA started (epoch seconds): the burst's queued side.
STARTS_KEY = "bench:starts"


@celery.task(bind=True, name="schedule_celery_task")
def schedule_celery_task(self: Task[Any, Any], *args: Any, **kwargs: Any) -> str:
    """The seed design's task; records how late it started against its ETA (without one:
    when it started)."""
    started = time.time()
    eta = self.request.eta
    if eta:
        lateness = started - datetime.fromisoformat(eta).timestamp()
        _client().rpush(LATENESS_KEY, f"{lateness:.6f}")
    else:
        _client().rpush(STARTS_KEY, f"{started:.6f}")
    return "Task completed"


#: Celery beat's side of the schedules bench: BENCH_BEAT_ENTRIES entries, each once a minute.
BEAT_LATENESS_KEY = "bench:beat_lateness"
_BEAT_ENTRIES = int(os.environ.get("BENCH_BEAT_ENTRIES", "0"))
if _BEAT_ENTRIES:
    from celery.schedules import crontab

    celery.conf.beat_schedule = {
        f"every-minute-{n}": {"task": "beat_tick", "schedule": crontab()}
        for n in range(_BEAT_ENTRIES)
    }


@celery.task(name="beat_tick")
def beat_tick() -> None:
    """A beat entry's run; records its nominal minute and how late it started after it."""
    started = time.time()
    nominal = started - started % 60
    _client().rpush(BEAT_LATENESS_KEY, f"{nominal:.0f} {started - nominal:.6f}")


def rq_job(*args: Any, **kwargs: Any) -> str:
    """What RQ runs; records nothing (RQ is measured on ingest, latency, memory, query)."""
    return "Task completed"
