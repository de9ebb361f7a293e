"""The task scripts' Lua source, how they are loaded, and the ARGV every one begins with;
and how Redis failures reach the store's callers (Unavailable)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from importlib import resources
from typing import Any

import redis
import redis.cluster

from schedkit.errors import Unavailable
from schedkit.model import to_millis, utc_now
from schedkit.store.header import lua_header

SCRIPTS = (
    "schedule",
    "claim",
    "handed",
    "redeliver",
    "start",
    "finish",
    "cancel",
    "page",
    "purge",
)


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """Map Redis connection failures to Unavailable at the store boundary."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise Unavailable(f"schedule store unreachable: {exc}") from exc
    except (
        redis.exceptions.ClusterError,
        redis.exceptions.TryAgainError,
        redis.exceptions.RedisClusterException,  # no node of the cluster reachable
    ) as exc:
        # A cluster moving slots or failing over a primary: the next call may succeed.
        raise Unavailable(f"schedule store cluster not ready: {exc}") from exc
    except redis.ResponseError as exc:
        if "LOADING" in str(exc) or "MASTERDOWN" in str(exc):
            raise Unavailable(f"schedule store not ready: {exc}") from exc
        raise


def script_text(name: str, *more: str) -> str:
    """The Lua source of script ``name``: the generated header, the prelude, the script, and
    the bodies of ``more`` after it (a guard before the script it guards)."""
    package = resources.files("schedkit.store") / "lua"
    prelude = (package / "prelude.lua").read_text()
    bodies = [(package / f"{part}.lua").read_text() for part in (name, *more)]
    return lua_header() + prelude + "\n" + "\n".join(bodies)


def load_script(client: redis.Redis, name: str) -> Any:
    return client.register_script(script_text(name))


def script_argv(task_prefix: str, history: int, now: datetime | None, *args: Any) -> list[Any]:
    """A script's ARGV: what prelude.lua reads first (task key prefix, history, clock), then
    ``args``."""
    return [task_prefix, history, to_millis(now or utc_now()), *args]
