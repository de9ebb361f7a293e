"""Operations: Prometheus metrics that move when tasks run, and structured logs with task ids."""

from __future__ import annotations

import json
import logging
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from celery import Celery
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from conftest import schedule_ids
from schedkit.demo import app as demo_app
from schedkit.dispatch.dispatcher import Dispatcher
from schedkit.dispatch.registry import TaskRegistry
from schedkit.logs import JsonFormatter, KeyValueFormatter
from schedkit.model import TaskSpec, TaskState
from schedkit.runtime.embedded import free_port
from schedkit.runtime.metrics import StoreCollector, serve_metrics
from schedkit.service.schedules import Schedules
from schedkit.settings import Settings
from schedkit.store.store import Store
from schedkit.testing import local_stack

FAST = {"handoff_window": 3.0, "poll_interval": 0.2, "claim_lease": 5.0}
FINAL = ["SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED"]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_move_when_tasks_run(tmp_path: Path) -> None:
    port = free_port()
    with local_stack(data_dir=tmp_path / "data", metrics_port=port, **FAST) as stack:
        before = scrape(port)
        assert before[("schedkit_tasks_scheduled_total", ())] == 0
        with stack.client() as client:
            ok = client.schedule("add", 1, 2, run_at=timedelta(seconds=1))
            bad = client.schedule("fail", run_at=timedelta(seconds=1))
            parked = client.schedule("add", 3, 4, run_at=timedelta(days=1))
            client.cancel(parked.id)
            client.schedule("add", 5, 6, run_at=timedelta(days=1))
            assert client.wait_for(ok.id, FINAL).state is TaskState.SUCCEEDED
            assert client.wait_for(bad.id, FINAL).state is TaskState.FAILED
        after = scrape(port)
    assert after[("schedkit_store_up", ())] == 1
    assert after[("schedkit_tasks_scheduled_total", ())] == 4
    assert after[("schedkit_tasks_handed_off_total", ())] == 2
    assert after[("schedkit_tasks_started_total", ())] == 2
    finished = {s: after[("schedkit_tasks_finished_total", (("state", s),))] for s in FINAL}
    assert finished == {"SUCCEEDED": 1, "FAILED": 1, "CANCELLED": 1, "EXPIRED": 0}
    assert after[("schedkit_start_lateness_seconds_count", ())] == 2
    assert after[("schedkit_start_lateness_seconds_bucket", (("le", "+Inf"),))] == 2
    assert after[("schedkit_start_lateness_seconds_sum", ())] >= 0
    assert after[("schedkit_tasks_parked", ())] == 1
    assert after[("schedkit_tasks", (("state", "SUCCEEDED"),))] == 1
    assert after[("schedkit_dispatcher_lag_seconds", ())] == 0


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    assert value is not None, name
    return value


def test_dispatcher_lag_shows_overdue_work_and_clears_once_handed_off(
    schedules: Schedules, store: Store, settings: Settings
) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    ten_ago = datetime.now(UTC) - timedelta(seconds=10)
    schedule_ids(schedules, [TaskSpec("add", ten_ago, [1, 2])])
    assert sample(registry, "schedkit_dispatcher_lag_seconds") >= 10
    assert sample(registry, "schedkit_tasks_parked") == 1
    assert Dispatcher(store, Celery("lag-check"), settings).run_once() == 1
    assert sample(registry, "schedkit_dispatcher_lag_seconds") == 0
    assert sample(registry, "schedkit_tasks_handed_off_total") == 1
    assert sample(registry, "schedkit_tasks", state="QUEUED") == 1


def test_metrics_show_where_a_burst_waits(store: Store, settings: Settings) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    bounded = replace(settings, max_in_flight=3)
    now = datetime.now(UTC)
    ids = schedule_ids(
        Schedules(store, TaskRegistry(demo_app, allow_queues="celery,reports"), bounded),
        [TaskSpec("add", now, [n, 0]) for n in range(5)]
        + [TaskSpec("add", now, [n, 1], queue="reports") for n in range(2)],
    )
    assert sample(registry, "schedkit_tasks_overdue") == 7
    assert Dispatcher(store, Celery("burst-check"), bounded).run_once() == 5
    assert sample(registry, "schedkit_tasks_in_flight", queue="default") == 3
    assert sample(registry, "schedkit_tasks_in_flight", queue="reports") == 2
    assert sample(registry, "schedkit_tasks_overdue") == 2  # waiting for room
    handed = [i for i in ids[:5] if store.get(i).state is TaskState.QUEUED]
    assert len(handed) == 3
    assert store.start(handed[0]) == "started"
    assert sample(registry, "schedkit_tasks_in_flight", queue="default") == 2


def test_duplicate_starts_are_refused_and_counted(schedules: Schedules, store: Store) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    (task_id,) = schedule_ids(schedules, [TaskSpec("add", datetime.now(UTC), [1, 2])])
    assert store.start(task_id) == "started"
    assert store.start(task_id) == "duplicate:STARTED"
    assert sample(registry, "schedkit_starts_refused_total", reason="duplicate") == 1
    assert sample(registry, "schedkit_tasks_started_total") == 1


def test_metrics_say_when_the_store_is_down() -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(Store.from_url(f"redis://127.0.0.1:{free_port()}/0")))
    assert sample(registry, "schedkit_store_up") == 0
    assert registry.get_sample_value("schedkit_tasks_parked") is None


def test_metrics_endpoint_on_a_chosen_port(store: Store) -> None:
    server = serve_metrics(store, port=0)
    try:
        assert scrape(server.port)[("schedkit_tasks_parked", ())] == 0
    finally:
        server.stop()


def record(**extra: object) -> logging.LogRecord:
    made = logging.makeLogRecord(
        {
            "name": "schedkit.dispatch.dispatcher",
            "levelname": "INFO",
            "msg": "handed off %d",
            "args": (1,),
        }
    )
    made.__dict__.update(extra)
    return made


def test_key_value_logs_carry_the_task_id() -> None:
    line = KeyValueFormatter().format(record(task_id="abc123", task="add", note="two words"))
    assert "INFO schedkit.dispatch.dispatcher: handed off 1" in line
    assert "task_id=abc123 task=add" in line
    assert 'note="two words"' in line


def test_json_logs_are_one_object_per_line() -> None:
    entry = json.loads(JsonFormatter().format(record(task_id="abc123")))
    assert entry["message"] == "handed off 1"
    assert entry["task_id"] == "abc123"
    assert entry["level"] == "INFO"


def test_the_dispatcher_logs_each_hand_off_with_its_task_id(
    schedules: Schedules, store: Store, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    (task_id,) = schedule_ids(schedules, [TaskSpec("add", datetime.now(UTC), [1, 2])])
    with caplog.at_level(logging.DEBUG, logger="schedkit.dispatch.dispatcher"):
        Dispatcher(store, Celery("log-check"), settings).run_once()
    assert [getattr(r, "task_id", None) for r in caplog.records if r.msg == "handed off"] == [
        task_id
    ]
