"""How many replicas must confirm a store write before its caller hears it succeeded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from schedkit.errors import ConfigError, Unavailable

if TYPE_CHECKING:
    from schedkit.settings import Settings


@dataclass(frozen=True)
class Replicas:
    """How many replicas must confirm a write the caller is told succeeded (Redis WAIT),
    and for how long to wait for them. Without it, an OK means the primary has the write;
    a failover before it reached a replica loses it."""

    count: int = 0
    timeout: float = 1.0

    @classmethod
    def of(cls, settings: Settings) -> Replicas:
        if settings.store_replicas < 0:
            raise ConfigError(
                f"SCHEDKIT_STORE_REPLICAS is {settings.store_replicas}: give 0 or more"
            )
        if settings.store_replicas and settings.store_replica_timeout <= 0:
            raise ConfigError(
                "SCHEDKIT_STORE_REPLICA_TIMEOUT must be above 0 seconds "
                f"(it is {settings.store_replica_timeout:g})"
            )
        if (
            settings.store_replicas
            and settings.store_timeout
            and settings.store_replica_timeout >= settings.store_timeout
        ):
            raise ConfigError(
                f"SCHEDKIT_STORE_REPLICA_TIMEOUT ({settings.store_replica_timeout:g} s) must be "
                f"below SCHEDKIT_STORE_TIMEOUT ({settings.store_timeout:g} s), or the call "
                "times out before the replicas can answer"
            )
        return cls(settings.store_replicas, settings.store_replica_timeout)

    def wait_args(self) -> tuple[int, int]:
        """WAIT's arguments: replicas, then the timeout in ms (never 0, which blocks)."""
        return self.count, max(1, int(self.timeout * 1000))

    def check(self, confirmed: int, write: str) -> None:
        """Raise Unavailable when fewer than ``count`` replicas confirmed ``write``."""
        if confirmed < self.count:
            raise Unavailable(
                f"the store's primary took the {write}, but {confirmed} of "
                f"{self.count} replicas confirmed it within {self.timeout:g} s "
                "(SCHEDKIT_STORE_REPLICAS): a failover could lose it. Retrying is safe: the "
                "same idempotency key never makes a second task, and a cancel is done once"
            )
