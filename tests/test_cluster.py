"""The store on a real Redis Cluster (`redis+cluster://`): 3 primaries, 3 replicas on loopback.

Every key sits in one hash slot (the prefix is a hash tag), so the cluster gives failover and
its operations, not more room; the broker is a Redis of its own, because Celery's Redis
transport does not speak Redis Cluster.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from schedkit.errors import ConfigError
from schedkit.settings import Settings
from schedkit.store.store import Store
from schedkit.testing import ClusterSet, LocalStack, cluster_set, local_stack, redis_server
from store_checks import schedule_idempotency_list_and_cancel, watch_hand_off_and_run_once


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterSet]:
    with cluster_set() as deployment:
        yield deployment


@pytest.fixture(scope="module")
def on_cluster(cluster: ClusterSet) -> Iterator[LocalStack]:
    with (
        redis_server(appendonly=False) as broker,
        local_stack(
            store_url=cluster.url(),
            broker_url=broker.url,
            handoff_window=3.0,
            poll_interval=0.2,
            claim_lease=5.0,
        ) as stack,
    ):
        yield stack


def test_every_key_of_the_store_is_in_one_slot_of_the_cluster(on_cluster: LocalStack) -> None:
    schedule_idempotency_list_and_cancel(on_cluster)
    assert on_cluster.store is not None
    assert on_cluster.store.keys.prefix == "{schedkit}"
    cluster = on_cluster.store.redis
    keys = list(cluster.scan_iter(match="{schedkit}:*", target_nodes="all"))  # type: ignore[call-arg]
    assert keys
    assert {cluster.keyslot(key) for key in keys} == {cluster.keyslot("{schedkit}")}  # type: ignore[attr-defined]


def test_schedule_idempotency_list_and_cancel_on_a_cluster(on_cluster: LocalStack) -> None:
    schedule_idempotency_list_and_cancel(on_cluster)


def test_a_task_is_watched_handed_off_and_run_once_on_a_cluster(on_cluster: LocalStack) -> None:
    watch_hand_off_and_run_once(on_cluster)


def test_a_cluster_store_without_a_broker_is_refused_with_the_fix() -> None:
    settings = Settings(store_url="redis+cluster://127.0.0.1:7000")
    with pytest.raises(ConfigError, match="needs a broker of its own"):
        _ = settings.effective_broker_url


def test_replicas_are_refused_on_a_cluster_store_until_supported() -> None:
    settings = Settings(store_url="redis+cluster://127.0.0.1:7000", store_replicas=1)
    with pytest.raises(ConfigError, match="not supported on a Redis Cluster"):
        Store.for_settings(settings)


def test_a_cluster_url_with_a_database_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="a cluster has only database 0"):
        Store.for_settings(Settings(store_url="redis+cluster://127.0.0.1:7000/3"))


def test_scripts_without_the_hash_tag_would_be_refused_by_the_cluster(cluster: ClusterSet) -> None:
    """Why the prefix is a hash tag: the same store with plain key names fails CROSSSLOT."""
    client = redis.cluster.RedisCluster(host="127.0.0.1", port=cluster.primaries[0].port)
    try:
        with pytest.raises(redis.RedisClusterException, match=r"same key slot|CROSSSLOT"):
            client.eval("return 1", 2, "schedkit:claims", "schedkit:events")
    finally:
        client.close()
