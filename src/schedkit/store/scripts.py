"""The task scripts' Lua source, how they are loaded, and the ARGV every one begins with."""

from __future__ import annotations

from datetime import datetime
from importlib import resources
from typing import Any

import redis

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
