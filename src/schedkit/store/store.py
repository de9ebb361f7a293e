"""The schedule store: task records, the due-time index, claims and state changes in Redis.

Every state change is one Lua script, so the record, the state indexes and the event stream
never disagree, and several servers, dispatchers and workers can share one store.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
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
from schedkit.store.claimed import CLAIM_SCAN, CLAIM_SLICE, Claimed, Claims
from schedkit.store.codec import (
    make_page_token,
    pairs,
    parse_page_token,
    schedule_payload,
    schedule_results,
)
from schedkit.store.connect import close_sync, is_cluster, store_errors, sync_client
from schedkit.store.deferred import Deferred
from schedkit.store.keys import (
    MAX_PARTITIONS,
    Keys,
    one_slot,
    partition_of,
    partition_prefix,
)
from schedkit.store.query import TaskQuery
from schedkit.store.record import Field, NewTasks, decode
from schedkit.store.replicas import Replicas
from schedkit.store.scripts import SCRIPTS, load_script, script_argv

if TYPE_CHECKING:
    from redis.commands.core import Script

    from schedkit.settings import Settings

ALL_STATES: tuple[TaskState, ...] = tuple(TaskState)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Part:
    """The rows of a batch that go to one partition, and their places in the batch."""

    partition: int
    tasks: NewTasks
    positions: list[int]


#: Seconds a store call waits for Redis to take a connection or to answer before it fails
#: as Unavailable. A refused connection fails at once; this bounds a network partition or a
#: hung Redis, which would otherwise hold the call (and health) until TCP gives up.
DEFAULT_TIMEOUT = 10.0
#: The longest wait a blocking read (the dispatcher's BLPOP) asks Redis for; callers loop.
MAX_BLOCK_SECONDS = 5.0
#: On a cluster, the longest a dispatcher of several partitions blocks on one of them before
#: it looks at the others' wake lists (seconds).
CLUSTER_WAKE_SLICE = 0.2


def check_partitions(count: int) -> int:
    """``count`` if it is a partition count a store may have, else ConfigError naming the
    setting."""
    if not 1 <= count <= MAX_PARTITIONS:
        raise ConfigError(
            f"SCHEDKIT_STORE_PARTITIONS is {count}: give a number from 1 to {MAX_PARTITIONS}"
        )
    return count


class Store:
    """Task records and indexes in one Redis database, in ``partitions`` partitions."""

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
        partitions: int = 1,
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
        #: How many partitions the store has; partition 0 keeps the prefix's own key names
        #: (``schedkit.store.keys``).
        self.partitions = check_partitions(partitions)
        self.parts = [Keys(partition_prefix(prefix, p)) for p in range(partitions)]
        self.keys = self.parts[0]
        # Every script call of a partition passes the same KEYS (see keys.py): built once.
        self.part_script_keys = [keys.script_keys() for keys in self.parts]
        self.script_keys = self.part_script_keys[0]
        self.history = history
        self._scripts = {name: load_script(client, name) for name in SCRIPTS}
        self._wake_turn = 0

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "schedkit",
        history: int = 100_000,
        timeout: float = DEFAULT_TIMEOUT,
        replicas: Replicas | None = None,
        partitions: int = 1,
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
            partitions=partitions,
        )

    @classmethod
    def for_settings(cls, settings: Settings) -> Store:
        """The store ``settings`` name, with their prefix, event history, timeout and
        partitions; ConfigError when the store was created with another partition count."""
        store = cls.from_url(
            settings.store_url,
            prefix=settings.prefix,
            history=settings.event_history,
            timeout=settings.store_timeout,
            replicas=Replicas.of(settings),
            partitions=check_partitions(settings.store_partitions),
        )
        try:
            store.check_layout()
        except Unavailable as exc:
            # A store that is down now is checked by the next process start; refusing to
            # start here would turn an outage into a crash loop.
            log.warning("could not check the store's partition count: %s", exc)
        except ConfigError:
            store.close()
            raise
        return store

    def check_layout(self) -> None:
        """Record the partition count in the meta key if the store has none yet: this
        process's for a new store, 1 for one from before partitions (it has totals or
        events under the prefix). ConfigError when it differs from this process's."""
        meta = self.keys.meta
        with store_errors():
            recorded = self.redis.hget(meta, "partitions")
            if not recorded:
                used = self.redis.exists(self.keys.stats, self.keys.events)
                self.redis.hsetnx(meta, "partitions", 1 if used else self.partitions)
                recorded = self.redis.hget(meta, "partitions")
        stored = int(recorded) if recorded else 1
        if stored != self.partitions:
            raise ConfigError(
                f"the store under prefix {self.keys.prefix!r} was created with {stored} "
                f"partition(s), and this process is configured with SCHEDKIT_STORE_PARTITIONS="
                f"{self.partitions}: give every process {stored} (partitions cannot change "
                "once tasks are stored)"
            )

    def partition_of(self, task_id: str) -> int:
        """The partition ``task_id`` hashes to."""
        return partition_of(task_id, self.partitions)

    def close(self) -> None:
        """Release the connection pools."""
        close_sync(self.redis)
        if self._waiting is not self.redis:
            close_sync(self._waiting)

    def argv(self, partition: int, now: datetime | None, *args: Any) -> list[Any]:
        """A script's ARGV in ``partition`` (see :func:`script_argv`)."""
        return script_argv(self.parts[partition].task_prefix, self.history, now, *args)

    def _run(
        self,
        name: str,
        *args: Any,
        client: Any = None,
        now: datetime | None = None,
        partition: int = 0,
    ) -> Any:
        argv = self.argv(partition, now, *args)
        keys = self.part_script_keys[partition]
        with store_errors():
            return self._scripts[name](keys=keys, args=argv, client=client)

    def _run_acknowledged(
        self, name: str, *args: Any, now: datetime | None = None, partition: int = 0
    ) -> Any:
        """:meth:`_run` for a write the caller is told succeeded: with replicas asked for,
        followed by WAIT on the same connection (a pipeline), and Unavailable unless enough
        replicas confirm it."""
        argv = self.argv(partition, now, *args)
        keys = self.part_script_keys[partition]
        return self.acknowledged(self._scripts[name], keys, argv, partition=partition, what=name)

    def acknowledged(
        self,
        script: Script,
        keys: Sequence[str],
        argv: Sequence[Any],
        *,
        partition: int,
        what: str,
    ) -> Any:
        """Run ``script`` in ``partition`` as a write the caller relies on: with replicas
        asked for, followed by WAIT on the same connection (a pipeline), and Unavailable
        (naming ``what``) unless enough replicas confirm it."""
        if not self.replicas.count:
            with store_errors():
                return script(keys=keys, args=argv)
        with store_errors():
            pipe = self.script_pipeline(partition)
            script(keys=keys, args=argv, client=pipe)
        pipe.wait(*self.replicas.wait_args())
        with store_errors(), self.slot_moves():
            reply, confirmed = pipe.execute()
        self.replicas.check(int(confirmed), what)
        return reply

    def slot_client(self, partition: int = 0) -> redis.Redis:
        """A client of the one server that holds ``partition``'s keys: the store's own, or on
        a cluster the primary of its slot (WAIT counts the replicas of the connection it is
        sent on, and a cluster pipeline would send it to any node)."""
        if not self.on_cluster:
            return self.redis
        cluster = cast(redis.cluster.RedisCluster, self.redis)
        node = cluster.get_node_from_key(self.parts[partition].claims)  # type: ignore[no-untyped-call]
        return cluster.get_redis_connection(node)

    def script_pipeline(self, partition: int = 0) -> redis.client.Pipeline:
        """A pipeline (no transaction) that may run scripts. On a cluster it goes to the
        primary of ``partition``'s slot: a cluster pipeline refuses scripts, and every key of
        a partition is in that one slot. Execute it inside :meth:`slot_moves`."""
        return self.slot_client(partition).pipeline(transaction=False)

    def _evalsha_many(
        self, name: str, calls: Sequence[tuple[int, list[Any]]], *, acknowledged: bool = False
    ) -> list[Any]:
        """Run script ``name`` once per (partition, ARGV), pipelined: one pipeline per
        server (one on a single Redis), each followed by WAIT when ``acknowledged`` and
        replicas are asked for. Replies in call order.

        EVALSHA by hand: a pipeline given Script objects first asks SCRIPT EXISTS, one more
        round trip. A server without the script refuses every call of the pipeline (all are
        this script), so loading it and sending them again runs each once.
        """
        script = self._scripts[name]
        replies: list[Any] = [None] * len(calls)
        wait = acknowledged and self.replicas.count > 0
        for client, members in self.by_server([partition for partition, _ in calls]):
            for attempt in (1, 2):
                pipe = client.pipeline(transaction=False)
                for n in members:
                    partition, argv = calls[n]
                    keys = self.part_script_keys[partition]
                    pipe.evalsha(script.sha, len(keys), *keys, *argv)
                if wait:
                    pipe.wait(*self.replicas.wait_args())
                try:
                    with store_errors(), self.slot_moves():
                        got = pipe.execute()
                except redis.exceptions.NoScriptError:
                    if attempt == 2:
                        raise
                    with store_errors():
                        client.script_load(script.script)  # Redis restarted or was flushed
                    continue
                if wait:
                    self.replicas.check(int(got.pop()), name)
                for n, reply in zip(members, got, strict=True):
                    replies[n] = reply
                break
        return replies

    def by_server(self, partitions: Sequence[int]) -> list[tuple[redis.Redis, list[int]]]:
        """The servers ``partitions`` live on (one on a single Redis), each with the indices
        into ``partitions`` of the calls it takes, in order."""
        groups: dict[int, tuple[redis.Redis, list[int]]] = {}
        for n, partition in enumerate(partitions):
            client = self.slot_client(partition)
            groups.setdefault(id(client), (client, []))[1].append(n)
        return list(groups.values())

    def _evalsha_command(self, script: str, partition: int, argv: list[Any]) -> tuple[Any, ...]:
        """An EVALSHA of script ``script`` in ``partition`` as a packed command takes it."""
        keys = self.part_script_keys[partition]
        return ("EVALSHA", self._scripts[script].sha, len(keys), *keys, *argv)

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
        window = int(window_seconds * 1000)
        if self.partitions == 1:
            payload = schedule_payload(batch)
            verdicts = self._run_acknowledged("schedule", window, payload, now=now)
            return schedule_results(batch.rows, verdicts)
        parts = self.split(batch)
        now = now or utc_now()
        calls = [
            (part.partition, self.argv(part.partition, now, window, schedule_payload(part.tasks)))
            for part in parts
        ]
        replies = self._evalsha_many("schedule", calls, acknowledged=True)
        return self.merge_results(batch, parts, replies)

    def split(self, batch: NewTasks) -> list[Part]:
        """``batch`` split by partition (one script call each), in partition order. Each part
        carries only the templates its rows name, so a batch of distinct tasks crosses the
        wire once, not once per partition."""
        positions: dict[int, list[int]] = {}
        for n, row in enumerate(batch.rows):
            positions.setdefault(self.partition_of(row.id), []).append(n)
        parts = []
        for partition in sorted(positions):
            templates: list[list[str]] = []
            renumbered: dict[int, int] = {}
            rows = []
            for n in positions[partition]:
                row = batch.rows[n]
                if row.template not in renumbered:
                    renumbered[row.template] = len(templates)
                    templates.append(batch.templates[row.template])
                rows.append(row._replace(template=renumbered[row.template]))
            tasks = NewTasks(templates, rows, batch.created_ms)
            parts.append(Part(partition, tasks, positions[partition]))
        return parts

    @staticmethod
    def merge_results(
        batch: NewTasks, parts: Sequence[Part], replies: Sequence[Any]
    ) -> list[ScheduleResult]:
        """The results of a split batch's script calls, back in the batch's row order."""
        results: list[ScheduleResult | None] = [None] * len(batch.rows)
        for part, verdicts in zip(parts, replies, strict=True):
            found = schedule_results(part.tasks.rows, verdicts)
            for n, result in zip(part.positions, found, strict=True):
                results[n] = result
        return [result for result in results if result is not None]

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
                pipe.hgetall(self.parts[self.partition_of(task_id)].task(task_id))
            raws: list[Any] = pipe.execute()
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

    def _page_once(
        self, query: TaskQuery, *, page_size: int, page_token: str, scan_budget: int
    ) -> tuple[list[TaskRecord], str]:
        cursor_score, cursor_id = parse_page_token(page_token)
        budget = scan_budget or max(page_size * 20, 2000)
        if self.partitions > 1 and not scan_budget:
            # Each partition scans its share: a page reads about as much as with one.
            budget = max(budget // self.partitions, page_size, 100)
        states = sorted(query.states or ALL_STATES)
        labels = json.dumps(dict(query.labels)) if query.labels else ""
        lo = str(to_millis(query.run_after)) if query.run_after else ""
        hi = str(to_millis(query.run_before)) if query.run_before else ""
        now = utc_now()
        # One (run time, id) cursor serves every partition: the order is total, so each
        # partition's scan resumes after it, and the horizon below keeps a page from
        # running past what a partition whose budget ran out has not read yet.
        calls = [
            (partition, self.argv(
                partition, now, state.value, lo, hi,
                cursor_score, cursor_id, page_size, budget, query.task, labels,
            ))
            for partition in range(self.partitions)
            for state in states
        ]  # fmt: skip
        replies = self._evalsha_many("page", calls)
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
        """How many tasks are in ``state``, all partitions together."""
        with store_errors():
            pipe = self.redis.pipeline(transaction=False)
            for keys in self.parts:
                pipe.zcard(keys.state(state.value))
            return sum(int(size) for size in pipe.execute())

    def all_partitions(self, partitions: Sequence[int] | None) -> Sequence[int]:
        """``partitions``, or every partition when None."""
        return range(self.partitions) if partitions is None else partitions

    # -- the dispatcher's side --------------------------------------------------------------

    def claim(
        self,
        *,
        window_seconds: float,
        lease_seconds: float,
        limit: int,
        max_in_flight: int = 0,
        now: datetime | None = None,
        partitions: Sequence[int] | None = None,
    ) -> Claims:
        """Atomically claim up to ``limit`` tasks due within the window, under a lease, in
        run-time order (priority breaks ties), keeping each queue's tasks claimed or handed
        off and not yet started at ``max_in_flight`` at most (0: no bound).

        One script call claims at most :data:`CLAIM_SLICE` tasks and reads at most
        :data:`CLAIM_SCAN` due entries, so Redis stays responsive however large a burst is;
        a larger ``limit`` takes several calls. Over several ``partitions`` (None: all) the
        calls take turns, a slice each, so a backlog in one does not starve the others;
        each partition keeps its share of ``max_in_flight``.
        """
        claimed = Claims()
        open_parts = list(self.all_partitions(partitions))
        share = self._flight_share(max_in_flight)
        held: dict[int, int] = {}
        self._claim_more(
            claimed, open_parts, held, limit, window_seconds, lease_seconds, share, now
        )
        return self._claims_done(claimed, held)

    def _flight_share(self, max_in_flight: int) -> int:
        """The in-flight bound of one partition: each counts its own in flight, and the
        shares keep the sum at ``max_in_flight``."""
        return -(-max_in_flight // self.partitions) if max_in_flight > 0 else max_in_flight

    def _claim_more(
        self,
        claimed: Claims,
        open_parts: list[int],
        held: dict[int, int],
        limit: int,
        window_seconds: float,
        lease_seconds: float,
        share: int,
        now: datetime | None,
    ) -> None:
        """Claim a slice at a time from ``open_parts`` in turn until ``claimed`` holds
        ``limit`` or every partition came up short (it leaves ``open_parts``)."""
        while open_parts and len(claimed) < limit:
            for partition in list(open_parts):
                want = min(CLAIM_SLICE, limit - len(claimed))
                if want <= 0:
                    break
                got = self._claim_slice(
                    claimed, partition, want, window_seconds, lease_seconds, share, now
                )
                held[partition] = got[1]
                if got[0] < want:
                    open_parts.remove(partition)

    @staticmethod
    def _claims_done(claimed: Claims, held: dict[int, int]) -> Claims:
        claimed.held_back = sum(held.values())
        if len(held) > 1:
            # Each partition's slice is in run-time order; hand off the round in that order.
            claimed.sort(key=lambda task: task.run_at)
        return claimed

    def claim_later(
        self,
        *,
        window_seconds: float,
        lease_seconds: float,
        limit: int,
        max_in_flight: int = 0,
        now: datetime | None = None,
        partitions: Sequence[int] | None = None,
    ) -> Callable[[], Claims]:
        """:meth:`claim`, its script calls sent now and their replies read when the returned
        function is called (exactly once): the dispatcher claims its next round while it
        publishes this one. For a burst: every slice a full claim takes is sent at once (in
        :meth:`claim`'s turns among partitions), one connection per server; each call is
        still one atomic script of one slice. With replicas asked for, a WAIT follows each
        server's calls and nothing is returned before it confirms them. A partition whose
        slices came up short gives its unused share to those whose did not, as in
        :meth:`claim`, when the replies are read."""
        parts = list(self.all_partitions(partitions))
        share = self._flight_share(max_in_flight)
        plan: list[tuple[int, int]] = []  # (partition, want) per call, in claim's order
        planned = 0
        while parts and planned < limit:
            for partition in parts:
                want = min(CLAIM_SLICE, limit - planned)
                if want <= 0:
                    break
                plan.append((partition, want))
                planned += want
        wait = self.replicas.count > 0
        groups = self.by_server([partition for partition, _ in plan])
        batches = []
        for client, members in groups:
            commands = [
                self._evalsha_command(
                    "claim",
                    plan[n][0],
                    self.argv(
                        plan[n][0],
                        now,
                        int(window_seconds * 1000),
                        int(lease_seconds * 1000),
                        plan[n][1],
                        max(0, share),
                        CLAIM_SCAN,
                    ),
                )
                for n in members
            ]
            if wait:
                commands.append(("WAIT", *self.replicas.wait_args()))
            batches.append((client, commands))
        with store_errors(), self.slot_moves():
            sent = Deferred(batches)

        def answered() -> Claims:
            replies: list[Any] = [None] * len(plan)
            confirmed: list[int] = []
            with store_errors(), self.slot_moves():
                answers = sent.replies()
            for (_, members), got in zip(groups, answers, strict=True):
                if wait:
                    confirmed.append(int(got.pop()))
                for n, reply in zip(members, got, strict=True):
                    # Redis lost its scripts: the call claimed nothing (left None).
                    if not isinstance(reply, redis.exceptions.NoScriptError):
                        replies[n] = reply
            for count in confirmed:
                self.replicas.check(count, "claim")
            claimed = Claims()
            held: dict[int, int] = {}
            short: set[int] = set()
            for (partition, want), flat in zip(plan, replies, strict=True):
                if flat is None:
                    continue
                took, held[partition] = self._claimed_from(claimed, partition, flat)
                if took < want:
                    short.add(partition)
            # What calls that did not run (no script) and partitions that came up short left
            # of the limit goes to the others (those the plan did not reach too), a slice at
            # a time, as claim does.
            open_parts = [p for p in parts if p not in short]
            self._claim_more(
                claimed, open_parts, held, limit, window_seconds, lease_seconds, share, now
            )
            return self._claims_done(claimed, held)

        return answered

    def _claim_slice(
        self,
        claimed: Claims,
        partition: int,
        want: int,
        window_seconds: float,
        lease_seconds: float,
        max_in_flight: int,
        now: datetime | None,
    ) -> tuple[int, int]:
        """One claim script call in ``partition``, appended to ``claimed``: (how many it
        took, how many it held back)."""
        # With replicas asked for, a claim waits for them before anything is handed off:
        # WAIT covers every earlier write on the primary too, so no task whose creation a
        # failover could still undo (its caller told UNAVAILABLE, about to retry) reaches a
        # worker, and no claim a failover would lose is handed off again.
        flat = self._run_acknowledged(
            "claim",
            int(window_seconds * 1000),
            int(lease_seconds * 1000),
            want,
            max(0, max_in_flight),
            CLAIM_SCAN,
            now=now,
            partition=partition,
        )
        return self._claimed_from(claimed, partition, flat)

    @staticmethod
    def _claimed_from(claimed: Claims, partition: int, flat: list[Any]) -> tuple[int, int]:
        """Append the tasks of one claim script reply to ``claimed``: (how many it took, how
        many it held back)."""
        # Tasks of one burst share run times: one datetime per distinct run time.
        times: dict[str, datetime] = {}
        append = claimed.append
        for i in range(1, len(flat), 7):
            task_id, task, args, kwargs, run, queue, priority = flat[i : i + 7]
            run_at = times.get(run)
            if run_at is None:
                run_at = times[run] = from_millis(int(run))
            append(
                Claimed(
                    task_id,
                    task,
                    None,
                    None,
                    run_at,
                    queue,
                    int(priority) if priority else None,
                    partition,
                    args_json=args,
                    kwargs_json=kwargs,
                )
            )
        return len(flat) // 7, int(flat[0])

    def _claimed_in(self, task_id: str, where: Mapping[str, int] | None) -> int:
        """The partition a claimed task is settled in: ``where`` says (the one it was claimed
        from, :attr:`Claimed.partition`), else the one its id hashes to. Every task, runs of
        schedules too, lives where its id hashes, so both agree."""
        return where[task_id] if where else self.partition_of(task_id)

    def _settle(
        self,
        verdict: str,
        tasks: Sequence[tuple[str, ...]],
        now: datetime | None,
        where: Mapping[str, int] | None,
    ) -> None:
        """Run the handed script over ``tasks`` (the values of each: an id first), in the
        partition each was claimed from (``where``; else the one its id hashes to), in calls
        of at most :data:`CLAIM_SLICE` tasks, so no one call holds Redis long."""
        if not tasks:
            return
        by_part: dict[int, list[str]] = {}
        for task in tasks:
            by_part.setdefault(self._claimed_in(task[0], where), []).extend(task)
        size = CLAIM_SLICE * len(tasks[0])
        for partition, flat in by_part.items():
            for first in range(0, len(flat), size):
                chunk = flat[first : first + size]
                self._run("handed", verdict, *chunk, now=now, partition=partition)

    def mark_queued(
        self,
        task_ids: Sequence[str],
        now: datetime | None = None,
        where: Mapping[str, int] | None = None,
    ) -> None:
        """The broker has these tasks: QUEUED, claim settled (``where``: the partition each
        was claimed from, :attr:`Claimed.partition`; else the one its id hashes to)."""
        self._settle("queued", [(i,) for i in task_ids], now, where)

    def mark_queued_later(
        self,
        task_ids: Sequence[str],
        now: datetime | None = None,
        where: Mapping[str, int] | None = None,
    ) -> Callable[[], None]:
        """:meth:`mark_queued`, sent now and answered when the returned function is called:
        the caller's work in between (the dispatcher building its next messages) overlaps
        the scripts' run in Redis. Call it exactly once. One connection per server the
        partitions live on (one on a single Redis)."""
        by_part: dict[int, list[str]] = {}
        for task_id in task_ids:
            by_part.setdefault(self._claimed_in(task_id, where), []).append(task_id)
        parts = list(by_part)
        batches = []
        for client, members in self.by_server(parts):
            commands = []
            for n in members:
                ids = by_part[parts[n]]
                for first in range(0, len(ids), CLAIM_SLICE):
                    argv = self.argv(parts[n], now, "queued", *ids[first : first + CLAIM_SLICE])
                    commands.append(self._evalsha_command("handed", parts[n], argv))
            batches.append((client, commands))
        with store_errors():
            sent = Deferred(batches)

        def answered() -> None:
            with store_errors():
                answers = sent.replies()
            # Redis lost its scripts: nothing of those calls ran.
            missing = any(
                isinstance(reply, redis.exceptions.NoScriptError)
                for got in answers
                for reply in got
            )
            if missing:
                # Settles only what is still claimed.
                self.mark_queued(task_ids, now=now, where=where)

        return answered

    def release(
        self,
        task_ids: Sequence[str],
        now: datetime | None = None,
        where: Mapping[str, int] | None = None,
    ) -> None:
        """Hand-off failed: these tasks are due again right away."""
        self._settle("release", [(i,) for i in task_ids], now, where)

    def fail_refused(
        self,
        refused: Sequence[tuple[str, str]],
        now: datetime | None = None,
        where: Mapping[str, int] | None = None,
    ) -> None:
        """The broker refused these (id, reason) messages themselves: FAILED, claim settled,
        the reason as each task's error."""
        self._settle("failed", refused, now, where)

    def redeliver(
        self,
        *,
        stale_seconds: float,
        limit: int = 1000,
        now: datetime | None = None,
        partitions: Sequence[int] | None = None,
    ) -> list[str]:
        """Make due again the QUEUED tasks handed off and due ``stale_seconds`` ago that no
        worker started (their message was lost), in ``partitions`` (None: all); return
        their ids."""
        lost: list[str] = []
        for partition in self.all_partitions(partitions):
            got = self._run(
                "redeliver", int(stale_seconds * 1000), limit, now=now, partition=partition
            )
            lost.extend(str(i) for i in got)
        return lost

    def next_run_at(self, partitions: Sequence[int] | None = None) -> datetime | None:
        """Run time of the earliest parked task of ``partitions`` (None: all), if any."""
        with store_errors():
            pipe = self.redis.pipeline(transaction=False)
            for partition in self.all_partitions(partitions):
                pipe.zrange(self.parts[partition].state("SCHEDULED"), 0, 0, withscores=True)
            firsts = [int(first[0][1]) for first in pipe.execute() if first]
        return from_millis(min(firsts)) if firsts else None

    def wait_for_work(self, timeout: float, partitions: Sequence[int] | None = None) -> bool:
        """Block until a scheduler nudges (work entered the window) in ``partitions`` (None:
        all) or ``timeout`` passes.

        A cluster blocks on one slot per command: over several partitions it takes any
        nudge waiting in them, then blocks on one of them (in turn) for
        :data:`CLUSTER_WAKE_SLICE` at most, so a nudge to any is seen within that.
        """
        wakes = [self.parts[p].wake for p in self.all_partitions(partitions)]
        wait = min(max(timeout, 0.01), MAX_BLOCK_SECONDS)
        with store_errors():
            if len(wakes) == 1 or not self.on_cluster:
                return self._waiting.blpop(wakes, timeout=wait) is not None
            pipe = self.redis.pipeline(transaction=False)
            for wake in wakes:
                pipe.lpop(wake)
            if any(pipe.execute()):
                return True
            # Block on one (in turn), so a nudge to any is seen within a slice.
            self._wake_turn = (self._wake_turn + 1) % len(wakes)
            waiting_on = [wakes[self._wake_turn]]
            nudged = self._waiting.blpop(waiting_on, timeout=min(CLUSTER_WAKE_SLICE, wait))
            return nudged is not None

    def nudge(self) -> None:
        """Wake waiting dispatchers, one per partition (used on shutdown and in tests)."""
        with store_errors():
            for keys in self.parts:
                self.redis.lpush(keys.wake, "1")

    def purge(
        self,
        *,
        finished_before: datetime,
        limit: int = 1000,
        partitions: Sequence[int] | None = None,
    ) -> int:
        """Forget final tasks that finished before the given instant, in ``partitions``
        (None: all); return how many."""
        return sum(
            int(self._run("purge", to_millis(finished_before), limit, partition=p))
            for p in self.all_partitions(partitions)
        )

    # -- the worker's side ------------------------------------------------------------------

    def start(self, task_id: str, now: datetime | None = None) -> str:
        """Ask to start a task: 'started', 'unmanaged', 'cancelled', 'expired', 'duplicate:…'."""
        # Waited for like an acknowledged write: the run-once guard only holds across a
        # failover if the promoted replica knows the task started.
        partition = self.partition_of(task_id)
        return cast(str, self._run_acknowledged("start", task_id, now=now, partition=partition))

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
        return bool(
            self._run_acknowledged(
                "finish",
                task_id,
                state.value,
                result,
                error,
                traceback,
                now=now,
                partition=self.partition_of(task_id),
            )
        )

    def finish_many(
        self, records: Sequence[tuple[str, TaskState, str, str, str]], now: datetime | None = None
    ) -> None:
        """Record how many started tasks ended, (id, state, result, error, traceback) each,
        in one round trip."""
        if not records:
            return
        now = now or utc_now()
        calls = []
        for task_id, state, *rest in records:
            partition = self.partition_of(task_id)
            calls.append((partition, self.argv(partition, now, task_id, state.value, *rest)))
        # Acknowledged: a batch a failover could lose is kept and written again (finish only
        # changes a STARTED task, so a second write changes nothing twice).
        self._evalsha_many("finish", calls, acknowledged=True)

    # -- cancelling -------------------------------------------------------------------------

    def cancel(self, task_id: str, now: datetime | None = None) -> tuple[str, TaskState | None]:
        """Cancel a task not yet started: returns (verdict, state before)."""
        verdict, previous = self._run_acknowledged(
            "cancel", task_id, now=now, partition=self.partition_of(task_id)
        )
        return verdict, TaskState(previous) if previous else None
