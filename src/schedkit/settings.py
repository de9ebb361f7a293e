"""Settings: one dataclass, one default per field, read from ``SCHEDKIT_*`` environment variables.

CLI flags override the environment by passing keyword arguments to :meth:`Settings.from_env`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "schedkit"


@dataclass(frozen=True)
class Settings:
    """Everything a schedkit process can be told; see the README's configuration table."""

    #: Redis URL of the schedule store; empty starts the embedded Redis in ``data_dir``.
    store_url: str = ""
    #: Celery broker URL; empty means the store's Redis.
    broker_url: str = ""
    #: The Celery app as ``module:attribute``, as ``celery -A`` takes it.
    app: str = "schedkit.demo:app"
    #: Address the gRPC server listens on.
    listen: str = "127.0.0.1:50051"
    #: Where the embedded Redis keeps its append-only file.
    data_dir: Path = field(default_factory=_default_data_dir)
    #: Prefix of every Redis key schedkit writes.
    prefix: str = "schedkit"
    #: Tasks due within this many seconds are handed to Celery with apply_async(eta=...).
    handoff_window: float = 30.0
    #: A claimed task not handed off within this many seconds is claimed again.
    claim_lease: float = 30.0
    #: The dispatcher looks for due work at least this often, in seconds.
    poll_interval: float = 1.0
    #: Most tasks one dispatcher claims per round.
    claim_batch: int = 500
    #: A run time this many seconds in the past still runs at once; older is refused.
    past_tolerance: float = 300.0
    #: Largest JSON size of args plus kwargs of one task, in bytes.
    max_args_bytes: int = 65536
    #: Most tasks in one ScheduleTasks message.
    max_batch: int = 5000
    #: fnmatch pattern(s), comma separated, of task names that may be scheduled.
    allow_tasks: str = "*"
    #: Finished tasks are forgotten this many seconds after they finish.
    retention: float = 7 * 24 * 3600.0
    #: How many state changes the event stream keeps for WatchTasks.
    event_history: int = 100_000
    #: Threads serving gRPC calls (each WatchTasks stream holds one).
    server_threads: int = 32
    #: Seconds in-flight calls get to finish on shutdown.
    shutdown_grace: float = 5.0
    #: Processes of the worker that ``schedkit up`` starts.
    worker_concurrency: int = 2
    #: Embedded Redis fsync policy for its append-only file: always, everysec or no.
    appendfsync: str = "everysec"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``SCHEDKIT_<FIELD>`` variables, then apply non-None overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"SCHEDKIT_{f.name.upper()}")
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, raw, f.type)
        settings = cls(**values)
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(settings, **given) if given else settings

    def with_store(self, store_url: str) -> Settings:
        """Return a copy pointing at a running store (and broker, unless one is set)."""
        return replace(self, store_url=store_url, broker_url=self.broker_url or store_url)

    @property
    def effective_broker_url(self) -> str:
        """The broker Celery should use: the explicit one, else the store's Redis."""
        return self.broker_url or self.store_url


def _parse(name: str, raw: str, kind: Any) -> Any:
    kind_name = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    try:
        if kind_name == "float":
            return float(raw)
        if kind_name == "int":
            return int(raw)
        if kind_name == "Path":
            return Path(raw)
    except ValueError as exc:
        from schedkit.errors import ConfigError

        raise ConfigError(f"SCHEDKIT_{name.upper()}={raw!r} is not a valid {kind_name}") from exc
    return raw
