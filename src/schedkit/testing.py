"""Real parts for tests: a Redis server on a free port and a whole local stack.

Use them to test your own Celery tasks the way schedkit tests itself::

    from schedkit.testing import local_stack

    with local_stack(app="myproject.celery:app") as stack, stack.client() as client:
        task = client.schedule("myproject.tasks.send_report", run_at=timedelta(seconds=1))
        client.wait_for(task.id, ["SUCCEEDED"])
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from schedkit.client.client import Client
from schedkit.runtime.embedded import RedisServer
from schedkit.runtime.stack import Stack, local_settings


class LocalStack(Stack):
    """A Stack with a client factory."""

    def client(self, **options: Any) -> Client:
        """A client connected to this stack's server (with the stack's token, if it has one)."""
        tokens = self.settings.tokens()
        options.setdefault("token", tokens[0] if tokens else "")
        return Client.connect(self.address, **options)


@contextlib.contextmanager
def redis_server(data_dir: Path | None = None, **options: Any) -> Iterator[RedisServer]:
    """A fresh redis-server on a free port, stopped (and its temp data removed) on exit."""
    with RedisServer(data_dir=data_dir, **options) as server:
        yield server


@contextlib.contextmanager
def local_stack(
    *,
    worker: bool = True,
    worker_pool: str = "prefork",
    wait_for_worker: float = 60.0,
    worker_log: str | None = None,
    **settings: Any,
) -> Iterator[LocalStack]:
    """Embedded Redis on a free port, a worker, the dispatcher and a server on 127.0.0.1:0.

    Keyword arguments override :class:`schedkit.settings.Settings` fields; the environment is
    not read, so a developer's SCHEDKIT_* variables cannot leak into tests.
    """
    with contextlib.ExitStack() as cleanup:
        if "data_dir" not in settings and "store_url" not in settings:
            settings["data_dir"] = Path(cleanup.enter_context(tempfile.TemporaryDirectory()))
        stack = LocalStack(
            local_settings(**settings),
            worker=worker,
            worker_pool=worker_pool,
            worker_log=worker_log,
        )
        cleanup.enter_context(stack)
        if worker:
            stack.wait_for_worker(wait_for_worker)
        yield stack
