"""Size limits over a real server: each refusal names the limit and the setting that moves it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from schedkit.client.client import Client
from schedkit.errors import InvalidArgument, ResourceExhausted
from schedkit.model import Outcome, TaskSpec, TaskState
from schedkit.service.schedules import MAX_LABELS, MAX_PAGE_SIZE, Schedules
from schedkit.service.server import Server
from schedkit.service.servicer import MAX_FILTER_IDS


@contextlib.contextmanager
def connected(schedules: Schedules, **changes: object) -> Iterator[Client]:
    settings = replace(schedules.settings, listen="127.0.0.1:0", **changes)  # type: ignore[arg-type]
    schedules.settings = settings
    server = Server(schedules).start()
    try:
        with Client.connect(server.address, token="") as client:
            yield client
    finally:
        server.stop(0)


def later() -> datetime:
    return datetime.now(UTC) + timedelta(hours=1)


def test_a_message_over_the_size_limit_is_resource_exhausted(schedules: Schedules) -> None:
    with connected(schedules, max_message_bytes=256 * 1024, max_args_bytes=10**7) as client:
        big = "x" * 300_000
        with pytest.raises(ResourceExhausted, match="larger than max") as caught:
            client.schedule("add", big, 1, run_at=later())
        assert "SCHEDKIT_MAX_MESSAGE_BYTES" in caught.value.message
        assert client.schedule("add", 1, 2, run_at=later()).state is TaskState.SCHEDULED
    assert schedules.store.count(TaskState.SCHEDULED) == 1


def test_args_over_the_limit_name_the_setting(schedules: Schedules) -> None:
    with (
        connected(schedules, max_args_bytes=100) as client,
        pytest.raises(InvalidArgument, match="SCHEDKIT_MAX_ARGS_BYTES") as caught,
    ):
        client.schedule("add", "y" * 200, 1, run_at=later())
    assert caught.value.violations[0].field == "spec.args"


def test_a_batch_over_the_limit_fails_the_stream_and_keeps_earlier_batches(
    schedules: Schedules,
) -> None:
    specs = [TaskSpec("add", later(), [n, 1]) for n in range(30)]
    with connected(schedules, max_batch=10) as client:
        kept = [r for r in client.schedule_many(specs[:10], batch_size=10)]
        assert {r.outcome for r in kept} == {Outcome.CREATED}
        with pytest.raises(InvalidArgument, match=r"more than 10 \(SCHEDKIT_MAX_BATCH\)"):
            list(client.schedule_many(specs[10:], batch_size=20))
    assert schedules.store.count(TaskState.SCHEDULED) == 10


def test_too_many_labels_are_refused_in_specs_and_filters(schedules: Schedules) -> None:
    labels = {f"l{n}": "v" for n in range(MAX_LABELS + 1)}
    with connected(schedules) as client:
        with pytest.raises(InvalidArgument, match=f"more than {MAX_LABELS} labels"):
            client.schedule("add", 1, 2, run_at=later(), labels=labels)
        with pytest.raises(InvalidArgument, match=r"filter\.labels"):
            client.tasks_page(labels=labels)


def test_page_size_and_watched_ids_are_bounded(schedules: Schedules) -> None:
    with connected(schedules) as client:
        with pytest.raises(InvalidArgument, match=f"between 0 .* and {MAX_PAGE_SIZE}"):
            client.tasks_page(page_size=MAX_PAGE_SIZE + 1)
        with pytest.raises(InvalidArgument, match=r"filter\.ids"):
            client.watch(ids=[f"id{n}" for n in range(MAX_FILTER_IDS + 1)], timeout=5)
