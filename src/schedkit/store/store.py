"""The schedule store: task records, the due-time index, claims and state changes in Redis.

Every state change is one Lua script, so the record, the state indexes and the event stream
never disagree, and several servers, dispatchers and workers can share one store.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import TYPE_CHECKING, Any, cast

import redis
import redis.cluster

from schedkit.errors import ConfigError, NotFound, Unavailable, excerpt
from schedkit.model import (
    ScheduleResult,
    TaskRecord,
    TaskState,
    from_millis,
    to_millis,
    utc_now,
)
from schedkit.store.codec import (
    make_page_token,
    pairs,
    parse_page_token,
    schedule_payload,
    schedule_results,
)
from schedkit.store.connect import close_sync, is_cluster, sync_client
from schedkit.store.header import lua_header
from schedkit.store.keys import Keys, one_slot
from schedkit.store.record import Field, NewTasks, decode

if TYPE_CHECKING:
    from schedkit.settings import Settings

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
ALL_STATES: tuple[TaskState, ...] = tuple(TaskState)


@dataclass(frozen=True)
class Claimed:
    """A task claimed for hand-off, with what apply_async needs."""

    id: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    run_at: datetime
    queue: str
    priority: int | None


class Claims(list[Claimed]):
    """Claimed tasks; ``held_back`` counts due tasks the last call left for want of room in
    their queue (its in-flight bound)."""

    held_back: int = 0


#: Most tasks one claim script call takes, and most due entries it reads: a call over a
#: burst of any size stays a few milliseconds long.
CLAIM_SLICE = 100
CLAIM_SCAN = 4 * CLAIM_SLICE


@dataclass(frozen=True)
class TaskQuery:
    """What ListTasks and WatchTasks select; empty fields match everything."""

    states: frozenset[TaskState] = frozenset()
    task: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    run_after: datetime | None = None
    run_before: datetime | None = None
    ids: frozenset[str] = frozenset()

    def matches(self, record: TaskRecord) -> bool:
        """True when ``record`` passes every set field."""
        spec = record.spec
        return (
            (not self.states or record.state in self.states)
            and (not self.task or spec.task == self.task)
            and all(spec.labels.get(k) == v for k, v in self.labels)
            and (self.run_after is None or spec.run_at >= self.run_after)
            and (self.run_before is None or spec.run_at < self.run_before)
            and (not self.ids or record.id in self.ids)
        )


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


def _load_script(client: redis.Redis, name: str) -> Any:
    return client.register_script(script_text(name))


#: Seconds a store call waits for Redis to take a connection or to answer before it fails
#: as Unavailable. A refused connection fails at once; this bounds a network partition or a
#: hung Redis, which would otherwise hold the call (and health) until TCP gives up.
DEFAULT_TIMEOUT = 10.0
#: The longest wait a blocking read (the dispatcher's BLPOP) asks Redis for; callers loop.
MAX_BLOCK_SECONDS = 5.0


class Store:
    """Task records and indexes in one Redis database."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "schedkit",
        history: int = 100_000,
        waiting: redis.Redis | None = None,
        url: str = "",
        timeout: float = DEFAULT_TIMEOUT,
        replicas: Replicas | None = None,
    ):
        self.redis = client
        #: What a schedule or cancel waits for before it is acknowledged.
        self.replicas = replicas or Replicas()
        #: The URL and timeout the store was opened with, for clients of other kinds (the
        #: server's asyncio reader); empty when built from a client.
        self.url = url
        self.timeout = timeout
        # Blocking reads wait on purpose: they get a pool whose read timeout allows for it.
        self._waiting = waiting or client
        self.keys = Keys(prefix)
        # Every script call passes the same KEYS (see keys.py); built once, not per call.
        self.script_keys = self.keys.script_keys()
        self.history = history
        self._scripts = {name: _load_script(client, name) for name in SCRIPTS}

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "schedkit",
        history: int = 100_000,
        timeout: float = DEFAULT_TIMEOUT,
        replicas: Replicas | None = None,
    ) -> Store:
        """Connect to the store at a redis://, rediss://, redis+sentinel:// or redis+cluster://
        URL (no round trip until first use; on a cluster ``prefix`` becomes a hash tag). A call
        that Redis does not take or answer within ``timeout`` seconds (0: no limit) fails
        as Unavailable."""

        if is_cluster(url):
            prefix = one_slot(prefix)

        def client(read_timeout: float | None) -> redis.Redis:
            return sync_client(url, connect=timeout or None, read=read_timeout)

        waiting = client(timeout + MAX_BLOCK_SECONDS) if timeout else None
        return cls(
            client(timeout or None),
            prefix=prefix,
            history=history,
            waiting=waiting,
            url=url,
            timeout=timeout,
            replicas=replicas,
        )

    @classmethod
    def for_settings(cls, settings: Settings) -> Store:
        """The store ``settings`` name, with their prefix, event history and timeout."""
        return cls.from_url(
            settings.store_url,
            prefix=settings.prefix,
            history=settings.event_history,
            timeout=settings.store_timeout,
            replicas=Replicas.of(settings),
        )

    def close(self) -> None:
        """Release the connection pools."""
        close_sync(self.redis)
        if self._waiting is not self.redis:
            close_sync(self._waiting)

    def _run(self, name: str, *args: Any, client: Any = None, now: datetime | None = None) -> Any:
        argv = script_argv(self.keys.task_prefix, self.history, now, *args)
        with store_errors():
            return self._scripts[name](keys=self.script_keys, args=argv, client=client)

    def _run_acknowledged(self, name: str, *args: Any, now: datetime | None = None) -> Any:
        """:meth:`_run` for a write the caller is told succeeded: with replicas asked for,
        followed by WAIT on the same connection (a pipeline), and Unavailable unless enough
        replicas confirm it."""
        if not self.replicas.count:
            return self._run(name, *args, now=now)
        with store_errors():
            pipe = self.script_pipeline()
        self._run(name, *args, client=pipe, now=now)
        pipe.wait(*self.replicas.wait_args())
        with store_errors(), self.slot_moves():
            reply, confirmed = pipe.execute()
        self.replicas.check(int(confirmed), name)
        return reply

    def _slot_client(self) -> redis.Redis:
        """A client of the one server that holds the store's keys: the store's own, or on a
        cluster the primary of its slot (WAIT counts the replicas of the connection it is
        sent on, and a cluster pipeline would send it to any node)."""
        if not self.on_cluster:
            return self.redis
        cluster = cast(redis.cluster.RedisCluster, self.redis)
        node = cluster.get_node_from_key(self.keys.claims)  # type: ignore[no-untyped-call]
        return cluster.get_redis_connection(node)

    def script_pipeline(self) -> redis.client.Pipeline:
        """A pipeline (no transaction) that may run scripts. On a cluster it goes to the
        primary of the store's slot: a cluster pipeline refuses scripts, and every key of the
        store is in that one slot. Execute it inside :meth:`slot_moves`."""
        return self._slot_client().pipeline(transaction=False)

    @contextlib.contextmanager
    def slot_moves(self) -> Iterator[None]:
        """Unavailable when the store's slot moved or its primary is unreachable (a cluster
        failover) under a :meth:`script_pipeline`; the cluster's layout is learnt again for
        the next call."""
        try:
            yield
        except (redis.exceptions.MovedError, redis.exceptions.AskError) as exc:
            self._relearn_cluster()
            raise Unavailable(f"the store's slot moved to another node: {exc}") from exc
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # The slot's primary is gone: the cluster client would learn it on its own
            # commands, but a node client does not tell it, so the next call would go to
            # the dead node again.
            self._relearn_cluster()
            raise Unavailable(f"schedule store unreachable: {exc}") from exc

    def _relearn_cluster(self) -> None:
        if self.on_cluster:
            with contextlib.suppress(redis.RedisError, redis.exceptions.RedisClusterException):
                cast(redis.cluster.RedisCluster, self.redis).nodes_manager.initialize()

    @property
    def on_cluster(self) -> bool:
        """True when the store is a Redis Cluster."""
        return isinstance(self.redis, redis.cluster.RedisCluster)

    def ping(self) -> None:
        """Raise Unavailable unless the store answers."""
        with store_errors():
            self.redis.ping()

    # -- scheduling -------------------------------------------------------------------------

    def schedule_new(
        self, batch: NewTasks, *, window_seconds: float, now: datetime | None = None
    ) -> list[ScheduleResult]:
        """Store a batch of new tasks in one round trip, results in row order."""
        if not batch.rows:
            return []
        payload = schedule_payload(batch)
        verdicts = self._run_acknowledged("schedule", int(window_seconds * 1000), payload, now=now)
        return schedule_results(batch.rows, verdicts)

    # -- reading ----------------------------------------------------------------------------

    def get(self, task_id: str) -> TaskRecord:
        """The task with this id, or NotFound."""
        record = self.get_many([task_id])[0]
        if record is None:
            raise NotFound(f"no task with id {excerpt(task_id)!r}")
        return record

    def get_many(self, task_ids: Sequence[str]) -> list[TaskRecord | None]:
        """Records for ids in one round trip; None where there is none."""
        with store_errors():
            pipe = self.redis.pipeline(transaction=False)
            for task_id in task_ids:
                pipe.hgetall(self.keys.task(task_id))
            raws = pipe.execute()
        return [
            decode(task_id, raw) if raw else None
            for task_id, raw in zip(task_ids, raws, strict=True)
        ]

    def page(
        self,
        query: TaskQuery,
        *,
        page_size: int,
        page_token: str = "",
        scan_budget: int = 0,
        max_rounds: int = 8,
    ) -> tuple[list[TaskRecord], str]:
        """One page of tasks ordered by (run time, id), and the token of the next page.

        A filter on task name or labels is checked while scanning the run-time index, so one
        scan may find few matches; keep scanning (up to ``max_rounds`` budgets) so callers see
        full pages whenever the matches exist, without one call scanning without bound.
        """
        records: list[TaskRecord] = []
        token = page_token
        for _ in range(max_rounds):
            found, token = self._page_once(
                query,
                page_size=page_size - len(records),
                page_token=token,
                scan_budget=scan_budget,
            )
            records.extend(found)
            if len(records) >= page_size or not token:
                break
        return records, token

    def _evalsha_all(self, sha: str, calls: list[list[Any]]) -> list[Any]:
        # EVALSHA by hand: a pipeline given Script objects first asks SCRIPT EXISTS, one
        # more round trip on every ListTasks page.
        keys = self.script_keys
        pipe = self.script_pipeline()
        for argv in calls:
            pipe.evalsha(sha, len(keys), *keys, *argv)
        with self.slot_moves():
            return pipe.execute()

    def _page_once(
        self, query: TaskQuery, *, page_size: int, page_token: str, scan_budget: int
    ) -> tuple[list[TaskRecord], str]:
        cursor_score, cursor_id = parse_page_token(page_token)
        budget = scan_budget or max(page_size * 20, 2000)
        states = sorted(query.states or ALL_STATES)
        labels = json.dumps(dict(query.labels)) if query.labels else ""
        lo = str(to_millis(query.run_after)) if query.run_after else ""
        hi = str(to_millis(query.run_before)) if query.run_before else ""
        now = utc_now()
        calls = [
            script_argv(
                self.keys.task_prefix, self.history, now, state.value, lo, hi,
                cursor_score, cursor_id, page_size, budget, query.task, labels,
            )
            for state in states
        ]  # fmt: skip
        script = self._scripts["page"]
        with store_errors():
            try:
                replies = self._evalsha_all(script.sha, calls)
            except redis.exceptions.NoScriptError:
                self.redis.script_load(script.script)  # Redis restarted or flushed its scripts
                replies = self._evalsha_all(script.sha, calls)
        candidates: list[tuple[float, str, dict[str, str]]] = []
        horizon: tuple[float, str] | None = None
        for reply in replies:
            exhausted, last_score, last_id = reply[0], reply[1], reply[2]
            for i in range(3, len(reply), 2):
                fields = dict(pairs(reply[i + 1]))
                candidates.append((float(fields[Field.RUN]), reply[i], fields))
            if not exhausted and last_id:
                frontier = (float(last_score), last_id)
                horizon = frontier if horizon is None else min(horizon, frontier)
        candidates.sort(key=lambda c: (c[0], c[1]))
        if horizon is not None:
            candidates = [c for c in candidates if (c[0], c[1]) <= horizon]
        page = candidates[:page_size]
        records = [decode(task_id, fields) for _, task_id, fields in page]
        if len(page) == page_size and (len(candidates) > page_size or horizon is not None):
            next_token = make_page_token(page[-1][0], page[-1][1])
        elif horizon is not None:
            next_token = make_page_token(*horizon)
        else:
            next_token = ""
        return records, next_token

    def count(self, state: TaskState) -> int:
        """How many tasks are in ``state``."""
        with store_errors():
            return int(self.redis.zcard(self.keys.state(state.value)))

    # -- the dispatcher's side --------------------------------------------------------------

    def claim(
        self,
        *,
        window_seconds: float,
        lease_seconds: float,
        limit: int,
        max_in_flight: int = 0,
        now: datetime | None = None,
    ) -> Claims:
        """Atomically claim up to ``limit`` tasks due within the window, under a lease, in
        run-time order (priority breaks ties), keeping each queue's tasks claimed or handed
        off and not yet started at ``max_in_flight`` at most (0: no bound).

        One script call claims at most :data:`CLAIM_SLICE` tasks and reads at most
        :data:`CLAIM_SCAN` due entries, so Redis stays responsive however large a burst is;
        a larger ``limit`` takes several calls.
        """
        claimed = Claims()
        while len(claimed) < limit:
            want = min(CLAIM_SLICE, limit - len(claimed))
            flat = self._run(
                "claim",
                int(window_seconds * 1000),
                int(lease_seconds * 1000),
                want,
                max(0, max_in_flight),
                CLAIM_SCAN,
                now=now,
            )
            claimed.held_back = int(flat[0])
            for i in range(1, len(flat), 7):
                task_id, task, args, kwargs, run, queue, priority = flat[i : i + 7]
                claimed.append(
                    Claimed(
                        id=task_id,
                        task=task,
                        args=json.loads(args) if args else [],
                        kwargs=json.loads(kwargs) if kwargs else {},
                        run_at=from_millis(int(run)),
                        queue=queue,
                        priority=int(priority) if priority else None,
                    )
                )
            if len(flat) // 7 < want:
                break
        return claimed

    def _settle(self, verdict: str, values: Sequence[str], step: int, now: datetime | None) -> None:
        """Run the handed script over ``values`` (``step`` values per task), in calls of at
        most :data:`CLAIM_SLICE` tasks, so no one call holds Redis long."""
        size = CLAIM_SLICE * step
        for first in range(0, len(values), size):
            self._run("handed", verdict, *values[first : first + size], now=now)

    def mark_queued(self, task_ids: Sequence[str], now: datetime | None = None) -> None:
        """The broker has these tasks: QUEUED, claim settled."""
        self._settle("queued", task_ids, 1, now)

    def mark_queued_later(
        self, task_ids: Sequence[str], now: datetime | None = None
    ) -> Callable[[], None]:
        """:meth:`mark_queued`, sent now and answered when the returned function is called:
        the caller's work in between (the dispatcher building its next messages) overlaps
        the scripts' run in Redis. Call it exactly once."""
        script = self._scripts["handed"]
        calls = [
            script_argv(
                self.keys.task_prefix, self.history, now, "queued", *task_ids[i : i + CLAIM_SLICE]
            )
            for i in range(0, len(task_ids), CLAIM_SLICE)
        ]
        pool = self._slot_client().connection_pool
        with store_errors():
            connection: Any = pool.get_connection()  # redis-py types it loosely
            try:
                keys = self.script_keys
                connection.send_packed_command(
                    connection.pack_commands(
                        [("EVALSHA", script.sha, len(keys), *keys, *argv) for argv in calls]
                    )
                )
            except BaseException:
                connection.disconnect()
                pool.release(connection)
                raise

        def answered() -> None:
            missing = False
            with store_errors():
                try:
                    for _ in calls:
                        try:
                            connection.read_response()
                        except redis.exceptions.NoScriptError:
                            missing = True  # Redis lost its scripts: nothing of it ran
                except BaseException:
                    connection.disconnect()
                    raise
                finally:
                    pool.release(connection)
            if missing:
                self.mark_queued(task_ids, now=now)  # settles only what is still claimed

        return answered

    def release(self, task_ids: Sequence[str], now: datetime | None = None) -> None:
        """Hand-off failed: these tasks are due again right away."""
        self._settle("release", task_ids, 1, now)

    def fail_refused(self, refused: Sequence[tuple[str, str]], now: datetime | None = None) -> None:
        """The broker refused these (id, reason) messages themselves: FAILED, claim settled,
        the reason as each task's error."""
        self._settle("failed", [value for pair in refused for value in pair], 2, now)

    def redeliver(
        self, *, stale_seconds: float, limit: int = 1000, now: datetime | None = None
    ) -> list[str]:
        """Make due again the QUEUED tasks handed off and due ``stale_seconds`` ago that no
        worker started (their message was lost); return their ids."""
        return [str(i) for i in self._run("redeliver", int(stale_seconds * 1000), limit, now=now)]

    def next_run_at(self) -> datetime | None:
        """Run time of the earliest parked task, if any."""
        with store_errors():
            first = self.redis.zrange(self.keys.state("SCHEDULED"), 0, 0, withscores=True)
        return from_millis(int(first[0][1])) if first else None

    def wait_for_work(self, timeout: float) -> bool:
        """Block until a scheduler nudges (work entered the window) or ``timeout`` passes."""
        with store_errors():
            wait = min(max(timeout, 0.01), MAX_BLOCK_SECONDS)
            return self._waiting.blpop([self.keys.wake], timeout=wait) is not None

    def nudge(self) -> None:
        """Wake one waiting dispatcher (used on shutdown and in tests)."""
        with store_errors():
            self.redis.lpush(self.keys.wake, "1")

    def purge(self, *, finished_before: datetime, limit: int = 1000) -> int:
        """Forget final tasks that finished before the given instant; return how many."""
        return int(self._run("purge", to_millis(finished_before), limit))

    # -- the worker's side ------------------------------------------------------------------

    def start(self, task_id: str, now: datetime | None = None) -> str:
        """Ask to start a task: 'started', 'unmanaged', 'cancelled', 'expired', 'duplicate:…'."""
        return cast(str, self._run("start", task_id, now=now))

    def finish(
        self,
        task_id: str,
        state: TaskState,
        *,
        result: str = "",
        error: str = "",
        traceback: str = "",
        now: datetime | None = None,
    ) -> bool:
        """Record how a started task ended; False if it was not STARTED."""
        return bool(self._run("finish", task_id, state.value, result, error, traceback, now=now))

    def finish_many(
        self, records: Sequence[tuple[str, TaskState, str, str, str]], now: datetime | None = None
    ) -> None:
        """Record how many started tasks ended, (id, state, result, error, traceback) each,
        in one round trip."""
        if not records:
            return
        sha = self._scripts["finish"].sha
        calls = [
            script_argv(self.keys.task_prefix, self.history, now, task_id, state.value, *rest)
            for task_id, state, *rest in records
        ]
        with store_errors():
            try:
                self._evalsha_all(sha, calls)
            except redis.exceptions.NoScriptError:
                self.redis.script_load(self._scripts["finish"].script)
                self._evalsha_all(sha, calls)  # the script only changes a STARTED task

    # -- cancelling -------------------------------------------------------------------------

    def cancel(self, task_id: str, now: datetime | None = None) -> tuple[str, TaskState | None]:
        """Cancel a task not yet started: returns (verdict, state before)."""
        verdict, previous = self._run_acknowledged("cancel", task_id, now=now)
        return verdict, TaskState(previous) if previous else None


def script_argv(task_prefix: str, history: int, now: datetime | None, *args: Any) -> list[Any]:
    """A script's ARGV: what prelude.lua reads first (task key prefix, history, clock), then
    ``args``."""
    return [task_prefix, history, to_millis(now or utc_now()), *args]
