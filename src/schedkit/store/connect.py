"""Redis clients for a store URL: ``redis://`` / ``rediss://`` directly, ``redis+sentinel://``
through Redis Sentinel, ``redis+cluster://`` as a Redis (or Valkey) Cluster.

A Sentinel client asks the sentinels which server is the primary of the service, and asks
again when its connection fails or the server it reached answers as a replica (after a
failover): calls in flight then fail as Unavailable, and the next ones reach the new primary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, cast

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel

from schedkit.errors import Unavailable
from schedkit.settings import CLUSTER_SCHEME, SENTINEL_SCHEME, ClusterUrl, SentinelUrl


def _options(connect: float | None, read: float | None) -> dict[str, Any]:
    return {
        "decode_responses": True,
        "socket_connect_timeout": connect,
        "socket_timeout": read,
        "socket_keepalive": True,
    }


def _sentinel_options(url: SentinelUrl, connect: float | None) -> dict[str, Any]:
    """How to reach the sentinels themselves: their password, and short timeouts, because a
    dead sentinel must not hold the question that the next one can answer."""
    options: dict[str, Any] = {"socket_connect_timeout": connect, "socket_timeout": connect}
    if url.sentinel_password:
        options["password"] = url.sentinel_password
    return options


def _primary(url: SentinelUrl) -> dict[str, Any]:
    return {"db": url.db, "username": url.username, "password": url.password}


def is_sentinel(url: str) -> bool:
    """True for a ``redis+sentinel://`` URL."""
    return url.startswith(f"{SENTINEL_SCHEME}://")


def is_cluster(url: str) -> bool:
    """True for a ``redis+cluster://`` URL."""
    return url.startswith(f"{CLUSTER_SCHEME}://")


def sync_client(url: str, *, connect: float | None, read: float | None) -> redis.Redis:
    """A blocking client of the store at ``url``."""
    if is_cluster(url):
        cluster = ClusterUrl.parse(url)
        return cast(
            redis.Redis,
            redis.cluster.RedisCluster(
                startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in cluster.nodes],  # type: ignore[no-untyped-call]
                username=cluster.username,
                password=cluster.password,
                health_check_interval=30,
                **_options(connect, read),
            ),
        )
    if not is_sentinel(url):
        return redis.Redis.from_url(url, health_check_interval=30, **_options(connect, read))
    parsed = SentinelUrl.parse(url)
    sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        list(parsed.sentinels), sentinel_kwargs=_sentinel_options(parsed, connect)
    )
    primary = sentinel.master_for(  # type: ignore[no-untyped-call]
        parsed.service,
        health_check_interval=30,
        **_primary(parsed),
        **_options(connect, read),
    )
    return cast(redis.Redis, primary)


def async_client(url: str, connect: float | None, read: float | None) -> redis.asyncio.Redis:
    """An asyncio client of the store at ``url``, with the same timeouts (None: no limit)."""
    if is_cluster(url):
        cluster = ClusterUrl.parse(url)
        nodes = [redis.asyncio.cluster.ClusterNode(h, p) for h, p in cluster.nodes]
        return cast(
            redis.asyncio.Redis,
            redis.asyncio.cluster.RedisCluster(
                startup_nodes=nodes,
                username=cluster.username,
                password=cluster.password,
                **_options(connect, read),
            ),
        )
    if not is_sentinel(url):
        return redis.asyncio.Redis.from_url(url, **_options(connect, read))
    parsed = SentinelUrl.parse(url)
    sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        list(parsed.sentinels), sentinel_kwargs=_sentinel_options(parsed, connect)
    )
    primary = sentinel.master_for(parsed.service, **_primary(parsed), **_options(connect, read))
    return cast(redis.asyncio.Redis, primary)


def close_sync(client: redis.Redis) -> None:
    """Close ``client``'s connections, and its sentinels' when it has them."""
    client.close()
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):
        sentinel.close()


async def close_async(client: redis.asyncio.Redis) -> None:
    """Close ``client``'s connections, and its sentinels' when it has them."""
    await client.aclose()
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):
        await sentinel.aclose()


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
