"""Real parts for tests: a Redis server on a free port and a whole local stack.

Use them to test your own Celery tasks the way schedkit tests itself::

    from schedkit.testing import local_stack

    with local_stack(app="myproject.celery:app") as stack, stack.client() as client:
        task = client.schedule("myproject.tasks.send_report", run_at=timedelta(seconds=1))
        client.wait_for(task.id, ["SUCCEEDED"])
"""

from __future__ import annotations

import contextlib
import functools
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis
import redis.cluster

from schedkit.client.client import Client
from schedkit.runtime.embedded import RedisServer, free_port
from schedkit.runtime.stack import Stack, local_settings


class LocalStack(Stack):
    """A Stack with a client factory."""

    def client(self, **options: Any) -> Client:
        """A client connected to this stack's server (with the stack's token, if it has one)."""
        tokens = self.settings.tokens()
        options.setdefault("token", tokens[0] if tokens else "")
        return Client.connect(self.address, **options)


def interrupt_on_sigterm() -> None:
    """Make SIGTERM end this process as Ctrl-C does, with a KeyboardInterrupt.

    Python's own SIGTERM handling exits at once, skipping every ``with`` block and fixture
    teardown, so the Redis servers and workers a test run, benchmark or drill started would
    outlive it. Call it from the main thread, before starting them.
    """
    signal.signal(signal.SIGTERM, _raise_interrupt)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signum}")


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


@dataclass
class SentinelSet:
    """A primary, its replicas and the sentinels watching them, all on loopback."""

    service: str
    servers: list[RedisServer]
    sentinel_ports: list[int]
    sentinels: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def url(self, db: int = 0) -> str:
        """The store URL: ``redis+sentinel://`` every sentinel, then the service and ``db``."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.service}/{db}"

    def ask(self, *command: str) -> Any:
        """Send a command to the first sentinel that answers."""
        for port in self.sentinel_ports:
            client = redis.Redis(port=port, decode_responses=True, socket_timeout=2)
            try:
                return client.execute_command(*command)  # type: ignore[no-untyped-call]
            except redis.ConnectionError:
                continue
            finally:
                client.close()
        raise redis.ConnectionError("no sentinel answers")

    def primary_port(self) -> int:
        """The port of the server the sentinels call primary now."""
        return int(self.ask("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)[1])

    def server(self, port: int) -> RedisServer:
        """The server listening on ``port``."""
        return next(server for server in self.servers if server.port == port)

    def failover(self, timeout: float = 60.0, *, settled: bool = False) -> int:
        """Promote a replica (SENTINEL FAILOVER); return the new primary's port once the
        sentinels name it and it answers as primary (and, if ``settled``, once every other
        server replicates from it again)."""
        old = self.primary_port()
        self.ask("SENTINEL", "FAILOVER", self.service)
        _poll(lambda: self._promoted(old), timeout, "the failover")
        if settled:
            _poll(self.ready, timeout, "the replicas to follow the new primary")
        return self.primary_port()

    def replicas_online(self) -> bool:
        """Every other server replicates from the primary and has caught up (WAIT counts
        only these)."""
        client = redis.Redis(port=self.primary_port(), decode_responses=True, socket_timeout=2)
        try:
            info = client.info("replication")
        except redis.RedisError:
            return False
        finally:
            client.close()
        online = [
            name
            for name, value in info.items()
            if name.startswith("slave") and isinstance(value, dict)
            if value.get("state") == "online"
        ]
        return len(online) == len(self.servers) - 1

    def _promoted(self, old: int) -> bool:
        port = self.primary_port()
        if port == old:
            return False
        client = redis.Redis(port=port, decode_responses=True, socket_timeout=2)
        try:
            return bool(client.info("replication")["role"] == "master")
        finally:
            client.close()

    def ready(self) -> bool:
        """Every sentinel knows the primary, its replicas and the other sentinels."""
        wanted_replicas = len(self.servers) - 1
        for port in self.sentinel_ports:
            client = redis.Redis(port=port, decode_responses=True, socket_timeout=2)
            try:
                info = cast(dict[str, Any], client.sentinel_master(self.service))
                if int(info["num-slaves"]) < wanted_replicas:
                    return False
                if int(info["num-other-sentinels"]) < len(self.sentinel_ports) - 1:
                    return False
            except redis.RedisError:
                return False
            finally:
                client.close()
        return self.replicas_online()


def _poll(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)  # sentinels have no readiness signal to wait on


@contextlib.contextmanager
def sentinel_set(
    *, replicas: int = 1, sentinels: int = 3, service: str = "schedkit"
) -> Iterator[SentinelSet]:
    """A real Sentinel deployment on free loopback ports: one primary, ``replicas`` replicas
    and ``sentinels`` sentinels (quorum: a majority) that fail over within seconds. Store
    URL: :meth:`SentinelSet.url`. Everything is stopped and removed on exit."""
    with contextlib.ExitStack() as cleanup:
        servers = [
            cleanup.enter_context(RedisServer(appendonly=False)) for _ in range(1 + replicas)
        ]
        primary = servers[0]
        for replica in servers[1:]:
            client = redis.Redis(port=replica.port)
            client.replicaof("127.0.0.1", primary.port)
            client.close()
        folder = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="sentinel-")))
        deployment = SentinelSet(service, servers, [free_port() for _ in range(sentinels)])
        for port in deployment.sentinel_ports:
            config = folder / f"sentinel-{port}.conf"  # sentinels rewrite their own file
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
                f"sentinel monitor {service} 127.0.0.1 {primary.port} {sentinels // 2 + 1}\n"
                f"sentinel down-after-milliseconds {service} 1000\n"
                f"sentinel failover-timeout {service} 10000\n"
            )
            process = subprocess.Popen(
                [primary.executable, str(config), "--sentinel"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deployment.sentinels.append(process)
            cleanup.callback(_stop, process)
        _poll(deployment.ready, 60, "the sentinels to find each other and the replicas")
        yield deployment


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


#: Hash slots of a Redis Cluster.
CLUSTER_SLOTS = 16384


@dataclass
class ClusterSet:
    """A Redis Cluster on loopback: primaries owning the slots, each with its replicas."""

    primaries: list[RedisServer]
    replicas: list[RedisServer]

    def url(self) -> str:
        """The store URL: ``redis+cluster://`` and every primary (any one would do)."""
        nodes = ",".join(f"127.0.0.1:{server.port}" for server in self.primaries)
        return f"redis+cluster://{nodes}"

    @property
    def servers(self) -> list[RedisServer]:
        """Every node."""
        return self.primaries + self.replicas

    def owner(self, key: str) -> RedisServer:
        """The primary that holds ``key``'s slot now."""
        client = redis.cluster.RedisCluster(host="127.0.0.1", port=self._live().port)
        try:
            port = client.get_node_from_key(key).port  # type: ignore[no-untyped-call]
        finally:
            client.close()
        return next(server for server in self.servers if server.port == port)

    def primary_of(self, replica: RedisServer) -> int:
        """The port of the primary ``replica`` follows."""
        client = redis.Redis(port=replica.port, decode_responses=True)
        try:
            return int(client.info("replication")["master_port"])
        finally:
            client.close()

    def _live(self) -> RedisServer:
        return next(s for s in self.servers if s.process is not None and s.process.poll() is None)

    def healthy(self) -> bool:
        """Every node says the cluster is ok, and every replica follows its primary."""
        for server in self.servers:
            if server.process is None or server.process.poll() is not None:
                continue  # a node killed on purpose
            client = redis.Redis(port=server.port, decode_responses=True, socket_timeout=2)
            try:
                info = client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
                state = info if isinstance(info, dict) else _fields(str(info))
                if state.get("cluster_state") != "ok":
                    return False
                replication = client.info("replication")
                if replication["role"] == "slave" and replication["master_link_status"] != "up":
                    return False
            except redis.RedisError:
                return False
            finally:
                client.close()
        return True


def _fields(text: str) -> dict[str, str]:
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _cluster_port() -> int:
    """A free port whose cluster bus port (10,000 higher, so at most 65,535) is free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _node_id(server: RedisServer) -> str:
    client = redis.Redis(port=server.port, decode_responses=True)
    try:
        return str(client.execute_command("CLUSTER", "MYID"))  # type: ignore[no-untyped-call]
    finally:
        client.close()


@contextlib.contextmanager
def cluster_set(*, primaries: int = 3, replicas_each: int = 1) -> Iterator[ClusterSet]:
    """A real Redis Cluster on free loopback ports (default: 3 primaries, 3 replicas), built
    with CLUSTER commands as ``redis-cli --cluster create`` would. Store URL:
    :meth:`ClusterSet.url`. Everything is stopped and removed on exit."""
    # A node silent for 5 s is failed over: fast for drills, slow enough that a busy test
    # machine does not fail over a primary that is only slow.
    options = ["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"]
    with contextlib.ExitStack() as cleanup:

        def node() -> RedisServer:
            server = RedisServer(appendonly=False, options=options, port=_cluster_port())
            return cleanup.enter_context(server)

        deployment = ClusterSet(
            [node() for _ in range(primaries)],
            [node() for _ in range(primaries * replicas_each)],
        )
        clients = [
            redis.Redis(port=server.port, decode_responses=True) for server in deployment.servers
        ]
        try:
            share = CLUSTER_SLOTS // primaries
            for n, client in enumerate(clients[:primaries]):
                last = CLUSTER_SLOTS if n == primaries - 1 else (n + 1) * share
                client.execute_command("CLUSTER", "ADDSLOTS", *range(n * share, last))  # type: ignore[no-untyped-call]
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", n + 1)  # type: ignore[no-untyped-call]
            for client in clients[1:]:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", deployment.primaries[0].port)  # type: ignore[no-untyped-call]
            ids = [_node_id(server) for server in deployment.primaries]

            def known(client: redis.Redis, node_id: str) -> bool:
                return node_id in str(client.execute_command("CLUSTER", "NODES"))  # type: ignore[no-untyped-call]

            for n, client in enumerate(clients[primaries:]):
                primary = ids[n % primaries]
                _poll(functools.partial(known, client, primary), 30, "the nodes to meet")
                client.execute_command("CLUSTER", "REPLICATE", primary)  # type: ignore[no-untyped-call]
        finally:
            for client in clients:
                client.close()
        _poll(deployment.healthy, 60, "the cluster to be ok")
        yield deployment
