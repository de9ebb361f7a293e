"""A worker cut off from its store runs nothing unrecorded, and runs the task once the store is
back, however long that takes.

The worker reaches the store through a relay that goes silent (a network partition; see
``scripts/drills/relay.py``); the server and dispatcher reach it directly, so the task is
handed off during the outage and the worker's start guard is what fails.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from relay import SilentRelay

from conftest import poll
from schedkit.demo import runs
from schedkit.model import TaskState
from schedkit.testing import local_stack

#: Celery's default ``max_retries``: the outage must outlast this many retries of the start.
CELERY_DEFAULT_RETRIES = 3


def test_a_worker_cut_off_from_its_store_for_longer_than_celerys_retry_limit_runs_the_task_once(
    tmp_path: Path,
) -> None:
    log = tmp_path / "worker.log"
    with local_stack(worker=False, store_timeout=0.5, handoff_window=1.0) as stack:
        assert stack.store is not None
        store = stack.store
        port = int(stack.settings.store_url.rsplit(":", 1)[1].split("/")[0])
        with SilentRelay(("127.0.0.1", port)) as relay:
            command = stack.worker_command()
            command[command.index("--store") + 1] = relay.url
            stack.worker_command = lambda: command  # type: ignore[method-assign]
            stack.worker_log = str(log)
            stack.start_worker()
            stack.wait_for_worker(60)
            relay.go_silent()
            with stack.client() as client:
                task = client.schedule("add", 20, 22, run_at=timedelta(seconds=0))
                # The start is retried every 2 s while the store is away: wait for more
                # retries than Celery's default limit, after which the task used to FAIL.
                poll(
                    lambda: log.read_text().count(task.id + "] retry") > CELERY_DEFAULT_RETRIES,
                    60,
                    f"more than {CELERY_DEFAULT_RETRIES} retries of the start",
                )
                assert store.get(task.id).state is not TaskState.FAILED
                assert not [r for r in runs(store) if r["id"] == task.id]  # nothing ran
                relay.heal()
                done = client.wait_for(task.id, ["SUCCEEDED", "FAILED"], timeout=60)
            assert done.state is TaskState.SUCCEEDED, done.error
            assert [r["id"] for r in runs(store)].count(task.id) == 1
