"""The store and the broker through Redis Sentinel (`redis+sentinel://`), and a failover.

A real Sentinel deployment on loopback (`schedkit.testing.sentinel_set`: a primary, a
replica, three sentinels) and a whole local stack on it: the server and dispatcher find the
primary through the sentinels, and the default broker is Celery's own Sentinel transport on
another database of the same primary.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from conftest import FAST
from schedkit.model import TaskState
from schedkit.settings import Settings
from schedkit.store.store import Store
from schedkit.testing import LocalStack, SentinelSet, local_stack, sentinel_set
from store_checks import (
    a_schedule_is_materialized_and_its_runs_run,
    retried_call,
    schedule_idempotency_list_and_cancel,
    watch_hand_off_and_run_once,
)


@pytest.fixture(scope="module")
def sentinels() -> Iterator[SentinelSet]:
    with sentinel_set() as deployment:
        yield deployment


@pytest.fixture(scope="module")
def on_sentinel(sentinels: SentinelSet) -> Iterator[LocalStack]:
    with local_stack(
        store_url=sentinels.url(),
        **FAST,
        store_replicas=1,
        # A failover can lose what the broker held (messages are not WAITed for); such a
        # task comes back after this long (see docs/operations.md), so the test sees it.
        visibility_timeout=15.0,
    ) as stack:
        yield stack


def test_the_default_broker_is_celerys_sentinel_transport_beside_the_store(
    on_sentinel: LocalStack, sentinels: SentinelSet
) -> None:
    settings = on_sentinel.settings
    assert settings.effective_broker_url.startswith("sentinel://127.0.0.1:")
    assert settings.effective_broker_url.endswith("/1")
    assert settings.broker_transport_options() == {"master_name": sentinels.service}


def test_schedule_idempotency_list_and_cancel_through_sentinel(on_sentinel: LocalStack) -> None:
    schedule_idempotency_list_and_cancel(on_sentinel)


def test_a_task_is_watched_handed_off_and_run_once_through_sentinel(
    on_sentinel: LocalStack,
) -> None:
    watch_hand_off_and_run_once(on_sentinel)


@pytest.mark.timeout(300)
def test_a_failover_during_hand_off_loses_no_acknowledged_task(
    on_sentinel: LocalStack, sentinels: SentinelSet
) -> None:
    """With SCHEDKIT_STORE_REPLICAS=1 every OK schedule is on the replica that becomes the
    primary; a call that failed during the switch is retried with its key, as a caller would."""
    label = {"run": uuid.uuid4().hex[:8]}
    start = datetime.now(UTC) + timedelta(seconds=2)
    acknowledged: list[str] = []
    with on_sentinel.client() as client:
        for n in range(40):
            if n == 15:
                sentinels.failover()
            # During the switch, and until the old primary follows the new one, no replica
            # confirms: the call says so and the caller tries again (patience 60 s).
            task = retried_call(
                lambda n=n: client.schedule(
                    "add", n, 1, run_at=start + timedelta(milliseconds=150 * n),
                    key=f"failover-{label['run']}-{n}", labels=label,
                ),
                [],
                patience=60,
            )  # fmt: skip
            acknowledged.append(task.id)
        for task_id in acknowledged:
            finished = client.wait_for(task_id, ["SUCCEEDED", "FAILED"], timeout=120)
            assert finished.state == TaskState.SUCCEEDED, finished
        assert sorted(t.id for t in client.tasks(labels=label)) == sorted(acknowledged)


def test_a_sentinel_url_without_a_service_is_refused_by_name() -> None:
    from schedkit.errors import ConfigError

    with pytest.raises(ConfigError, match="names no service"):
        Store.for_settings(Settings(store_url="redis+sentinel://127.0.0.1:26379"))


def test_a_schedule_is_materialized_and_run_through_sentinel(on_sentinel: LocalStack) -> None:
    a_schedule_is_materialized_and_its_runs_run(on_sentinel)
