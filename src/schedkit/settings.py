"""Settings: one dataclass, one default per field, read from ``SCHEDKIT_*`` environment variables.

CLI flags override the environment by passing keyword arguments to :meth:`Settings.from_env`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "schedkit"


@dataclass(frozen=True)
class Settings:
    """Everything a schedkit process can be told; see the README's configuration table."""

    #: Redis URL of the schedule store; empty starts the embedded Redis in ``data_dir``.
    store_url: str = ""
    #: Seconds a store call waits for Redis to connect or answer before it fails (0: no limit).
    store_timeout: float = 10.0
    #: Replicas that must confirm a schedule or a cancel (Redis WAIT) before the call answers
    #: OK; fewer within ``store_replica_timeout`` fail it UNAVAILABLE. 0: the primary's word.
    store_replicas: int = 0
    #: Seconds a schedule or cancel waits for ``store_replicas`` replicas.
    store_replica_timeout: float = 1.0
    #: Partitions of the store (1 to 256), fixed when the store is created: each has its own
    #: due index, claims and event stream under a hash tag of its own, so on a Redis Cluster
    #: they spread over the primaries. Every process of one store must give the same number.
    store_partitions: int = 1
    #: Celery broker URL; empty means another database of the store's Redis (see
    #: :func:`broker_url_beside`). Never the store's own database.
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
    claim_batch: int = 1000
    #: Most tasks per queue handed off (or claimed) and not yet started; the rest of a burst
    #: waits in the store, in run-time order. Keep it above what the queue's workers prefetch
    #: (workers x concurrency x worker_prefetch_multiplier) plus a second of their start rate,
    #: so they never wait for the dispatcher. 0: no bound.
    max_in_flight: int = 2000
    #: A run time this many seconds in the past still runs at once; older is refused.
    past_tolerance: float = 300.0
    #: Largest JSON size of args plus kwargs of one task, in bytes.
    max_args_bytes: int = 65536
    #: Most tasks in one ScheduleTasks message.
    max_batch: int = 5000
    #: fnmatch pattern(s), comma separated, of task names that may be scheduled.
    allow_tasks: str = "*"
    #: Queue names, comma separated, a task may name; empty: the queues the Celery app
    #: declares (task_queues, else task_default_queue, plus simple task_routes).
    allow_queues: str = ""
    #: Finished tasks are forgotten this many seconds after they finish.
    retention: float = 7 * 24 * 3600.0
    #: How many state changes the event stream keeps for WatchTasks.
    event_history: int = 100_000
    #: Threads the server runs store calls on; streams wait without one.
    server_threads: int = 32
    #: Server processes sharing the listen port (SO_REUSEPORT), for ``schedkit serve``:
    #: one Python process answers from one core, so unary throughput grows with this.
    server_processes: int = 1
    #: Long-lived calls (WatchTasks, ScheduleTasks) open at once, all callers together.
    max_streams: int = 1000
    #: Long-lived calls one caller (a token; a peer address without tokens) may hold open.
    max_streams_per_caller: int = 100
    #: Health Watch streams, and reflection streams, open at once (each; no token needed).
    max_open_streams: int = 100
    #: Seconds a stream may wait for the caller's next message before it is ended.
    stream_idle_timeout: float = 60.0
    #: Seconds in-flight calls get to finish on shutdown.
    shutdown_grace: float = 5.0
    #: Processes of the worker that ``schedkit up`` starts.
    worker_concurrency: int = 2
    #: Log level of the worker ``schedkit up`` and ``schedkit worker`` run (Celery's
    #: ``--loglevel``). INFO logs three lines per task; WARNING saves their cost in a burst.
    worker_loglevel: str = "INFO"
    #: Redis broker: the worker keeps each message it took in the broker's ``unacked`` hash
    #: until Celery acknowledges it, so a worker that dies holding messages gets them back
    #: after the visibility timeout (kombu's ack emulation, Celery's default), for every
    #: message but schedkit's own hand-offs: schedkit hands those off again itself
    #: (``redeliver``), so the worker keeps them in memory only (dispatch/transport.py).
    #: Off: no message is recorded, which saves two round trips per Celery retry or plain
    #: ``apply_async`` message; those are then lost if the worker is killed holding them.
    worker_ack_emulation: bool = True
    #: Embedded Redis fsync policy for its append-only file: always, everysec or no.
    appendfsync: str = "everysec"
    #: Largest gRPC message the server (or a client) receives, in bytes.
    max_message_bytes: int = 64 * 1024 * 1024
    #: Bearer token every call but health and reflection must carry; empty: none required.
    token: str = ""
    #: File holding the accepted token(s), one per line (several allow rotation).
    token_file: str = ""
    #: PEM certificate (chain) this process presents: the server's, or a client's for mTLS.
    tls_cert: str = ""
    #: PEM private key of ``tls_cert``.
    tls_key: str = ""
    #: PEM CA bundle to trust for the peer: a server requires client certificates signed by
    #: it (mTLS); a client verifies the server with it.
    tls_ca: str = ""
    #: Let the server listen on a non-loopback address without a token or mTLS.
    insecure: bool = False
    #: Port of the Prometheus metrics endpoint (/metrics); 0 turns it off.
    metrics_port: int = 0
    #: Address the metrics endpoint binds to.
    metrics_addr: str = "127.0.0.1"
    #: Log format: text (key=value) or json (one object per line).
    log_format: str = "text"
    #: Seconds before the Redis broker hands an unacknowledged message to another worker
    #: (a worker that died holding it); must exceed the hand-off window plus start lateness.
    visibility_timeout: float = 300.0
    #: Runs of recurring schedules are made (parked) this many seconds before their time.
    schedule_lookahead: float = 300.0
    #: Most recurring schedules the store keeps; CreateSchedule beyond it is refused.
    max_schedules: int = 1_000_000
    #: Most runs one BackfillSchedule call makes; a longer range is refused (split it).
    max_backfill_runs: int = 10_000
    #: Seconds a buffered run (overlap policy buffer) waits before it asks to start again.
    overlap_buffer: float = 1.0

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

    def to_env(self) -> dict[str, str]:
        """Every field as the ``SCHEDKIT_<FIELD>`` variable :meth:`from_env` reads back: how a
        child process (the stack's worker) gets these settings, all of them, so a new field
        cannot be forgotten on the way."""
        return {f"SCHEDKIT_{f.name.upper()}": _format(getattr(self, f.name)) for f in fields(self)}

    def with_store(self, store_url: str) -> Settings:
        """Return a copy pointing at a running store; an unset broker follows it."""
        return replace(self, store_url=store_url)

    def tokens(self) -> tuple[str, ...]:
        """Every accepted token: ``token`` and the lines of ``token_file``."""
        if self.token and not self.token.strip():
            from schedkit.errors import ConfigError

            raise ConfigError("SCHEDKIT_TOKEN (--token) is blank: give a real token or none")
        found = [self.token] if self.token else []
        if self.token_file:
            from schedkit.errors import ConfigError

            try:
                text = Path(self.token_file).read_text()
            except OSError as exc:
                raise ConfigError(f"cannot read the token file {self.token_file}: {exc}") from exc
            found += [line.strip() for line in text.splitlines() if line.strip()]
            if not found:
                raise ConfigError(f"the token file {self.token_file} holds no token")
        return tuple(found)

    @property
    def effective_broker_url(self) -> str:
        """The broker Celery should use: the explicit one, else another database of the
        store's Redis. Raise ConfigError when an explicit one is the store's database."""
        if not self.broker_url:
            return broker_url_beside(self.store_url) if self.store_url else ""
        if self.store_url and same_redis_database(self.store_url, self.broker_url):
            from schedkit.errors import ConfigError

            raise ConfigError(
                f"the broker ({_safe(self.broker_url)}) is the store's Redis database "
                f"({_safe(self.store_url)}): queue names would be keys beside the store's, so "
                "a task's queue could overwrite or block schedkit's own data. Leave "
                "SCHEDKIT_BROKER_URL (--broker) empty to use another database of the same "
                "Redis, or point it at another database (for example /1) or server"
            )
        return self.broker_url

    def broker_transport_options(self) -> dict[str, Any]:
        """kombu transport options schedkit adds to the Celery app's own: for a Sentinel
        broker beside a Sentinel store, the store's service as ``master_name``."""
        broker = self.effective_broker_url
        if (
            urlsplit(broker).scheme == KOMBU_SENTINEL_SCHEME
            and urlsplit(self.store_url).scheme == SENTINEL_SCHEME
        ):
            return {"master_name": SentinelUrl.parse(self.store_url).service}
        return {}


def _format(value: Any) -> str:
    """A field's value as :func:`_parse` reads it back."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _parse(name: str, raw: str, kind: Any) -> Any:
    kind_name = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    try:
        if kind_name == "float":
            return float(raw)
        if kind_name == "int":
            return int(raw)
        if kind_name == "Path":
            return Path(raw)
        if kind_name == "bool":
            if raw.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if raw.strip().lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
    except ValueError as exc:
        from schedkit.errors import ConfigError

        raise ConfigError(f"SCHEDKIT_{name.upper()}={raw!r} is not a valid {kind_name}") from exc
    return raw


#: The Redis URL schemes whose database schedkit can read and change.
_REDIS_SCHEMES = ("redis", "rediss")
#: A store URL naming a primary that Redis Sentinel finds:
#: ``redis+sentinel://[[user]:password@]host:port[,host:port…]/service[/db][?sentinel_password=…]``.
SENTINEL_SCHEME = "redis+sentinel"
#: kombu's scheme for a Redis broker found through Sentinel (Celery's own transport).
KOMBU_SENTINEL_SCHEME = "sentinel"
#: A store URL naming a Redis (or Valkey) Cluster by any of its nodes:
#: ``redis+cluster://[[user]:password@]host:port[,host:port…]``; the client finds the rest.
CLUSTER_SCHEME = "redis+cluster"


@dataclass(frozen=True)
class _Servers:
    """The part of a several-server URL before its path: credentials, then host:port pairs
    separated by commas."""

    hosts: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str, scheme: str, what: str, default_port: int | None) -> _Servers:
        from schedkit.errors import ConfigError

        parts = urlsplit(url)
        if parts.scheme != scheme:
            raise ConfigError(f"{_safe(url)} is not a {scheme}:// URL")
        credentials, _, netloc = parts.netloc.rpartition("@")
        username, _, password = credentials.partition(":") if credentials else ("", "", "")
        hosts = []
        for host in filter(None, netloc.split(",")):
            if ":" not in host and default_port is not None:
                host = f"{host}:{default_port}"
            name, _, port = host.rpartition(":")
            try:
                hosts.append((name.strip("[]"), int(port)))
            except ValueError as exc:
                raise ConfigError(f"{_safe(url)}: {what} {host!r} has no valid port") from exc
        if not hosts:
            raise ConfigError(f"{_safe(url)} names no {what} (host:port, comma separated)")
        return cls(tuple(hosts), username or None, password or None)


@dataclass(frozen=True)
class ClusterUrl:
    """What a ``redis+cluster://`` store URL names: nodes to start from, and credentials."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> ClusterUrl:
        """Read ``url``; ConfigError naming the part that is missing or wrong."""
        from schedkit.errors import ConfigError

        servers = _Servers.parse(url, CLUSTER_SCHEME, "node", None)
        path = urlsplit(url).path.strip("/")
        if path not in ("", "0"):
            raise ConfigError(
                f"{_safe(url)} names database {path!r}: a cluster has only database 0"
            )
        return cls(servers.hosts, servers.username, servers.password)


@dataclass(frozen=True)
class SentinelUrl:
    """What a ``redis+sentinel://`` store URL names: the sentinels to ask, the service (the
    monitored primary's name), the database, and the credentials of primary and sentinels."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None

    @classmethod
    def parse(cls, url: str) -> SentinelUrl:
        """Read ``url``; ConfigError naming the part that is missing or wrong."""
        from schedkit.errors import ConfigError

        servers = _Servers.parse(url, SENTINEL_SCHEME, "sentinel", 26379)
        parts = urlsplit(url)
        service, _, db = parts.path.strip("/").partition("/")
        if not service:
            raise ConfigError(
                f"{_safe(url)} names no service: the primary's name in Sentinel, as in "
                f"{SENTINEL_SCHEME}://host:26379/mymaster/0"
            )
        try:
            database = int(db or 0)
        except ValueError as exc:
            raise ConfigError(f"{_safe(url)}: database {db!r} is not a number") from exc
        return cls(
            sentinels=servers.hosts,
            service=service,
            db=database,
            username=servers.username,
            password=servers.password,
            sentinel_password=dict(parse_qsl(parts.query)).get("sentinel_password"),
        )

    def kombu_url(self, db: int) -> str:
        """The same primary's database ``db`` as a kombu ``sentinel://`` broker URL (one
        alternative per sentinel; the service goes in the ``master_name`` transport option)."""
        auth = f"{self.username or ''}:{self.password}@" if self.password else ""
        return ";".join(
            f"{KOMBU_SENTINEL_SCHEME}://{auth}{host}:{port}/{db}" for host, port in self.sentinels
        )


def _database(url: str) -> int:
    """The database number of a redis:// URL: ``?db=`` first, then the path, else 0."""
    parts = urlsplit(url)
    raw = dict(parse_qsl(parts.query)).get("db") or parts.path.strip("/") or "0"
    try:
        return int(raw)
    except ValueError as exc:
        from schedkit.errors import ConfigError

        raise ConfigError(f"{_safe(url)} does not name a Redis database number") from exc


def _server(url: str) -> tuple[str, int]:
    """(host, port) of a redis:// URL, with every loopback name as one."""
    parts = urlsplit(url)
    host = (parts.hostname or "localhost").lower()
    if host in ("localhost", "::1") or host.startswith("127."):
        host = "loopback"
    return host, parts.port or 6379


def broker_url_beside(store_url: str) -> str:
    """The default broker of a store: the same Redis server, another database.

    Database n pairs with n ^ 1 (0 with 1, 2 with 3, ...): always another database, and
    within the 16 every Redis has unless told otherwise.
    """
    parts = urlsplit(store_url)
    if parts.scheme == CLUSTER_SCHEME:
        from schedkit.errors import ConfigError

        raise ConfigError(
            "a Redis Cluster store needs a broker of its own: Celery's Redis transport does "
            "not speak Redis Cluster. Set SCHEDKIT_BROKER_URL (--broker) to a Redis outside "
            "the cluster or to RabbitMQ (amqp://…)"
        )
    if parts.scheme == SENTINEL_SCHEME:
        sentinel = SentinelUrl.parse(store_url)
        return sentinel.kombu_url(sentinel.db ^ 1)
    if parts.scheme not in _REDIS_SCHEMES:
        from schedkit.errors import ConfigError

        raise ConfigError(
            f"cannot derive a broker from the store URL {_safe(store_url)}: set "
            "SCHEDKIT_BROKER_URL (--broker) to a Redis database other than the store's"
        )
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "db"])
    path = f"/{_database(store_url) ^ 1}"
    return urlunsplit((parts.scheme, parts.netloc, path, query, parts.fragment))


def same_redis_database(first: str, second: str) -> bool:
    """True when two URLs name the same database of the same Redis server."""
    schemes = {urlsplit(first).scheme, urlsplit(second).scheme}
    if schemes == {SENTINEL_SCHEME, KOMBU_SENTINEL_SCHEME}:
        # A Sentinel broker is taken to follow the store's own primary (the master_name it
        # gets by default): the same database number is the same database.
        store, broker = sorted((first, second), key=lambda url: not url.startswith("redis+"))
        return SentinelUrl.parse(store).db == _database(broker.split(";", 1)[0])
    if not schemes <= set(_REDIS_SCHEMES):
        return False  # another broker (amqp://...) cannot share the store's key space
    return _server(first) == _server(second) and _database(first) == _database(second)


def _safe(url: str) -> str:
    """A URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
