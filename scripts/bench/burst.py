"""Bursts: how fast tasks reach the broker, and how a burst due at one instant starts.

Hand-off rate: ``handoff_tasks`` parked tasks enter the hand-off window at one instant while
1 or 2 ``schedkit dispatch`` processes wait; the time until all are QUEUED gives tasks/s,
next to a bare ``apply_async(eta=...)`` loop in the same run.

Burst: ``burst_tasks`` tasks due at one instant, through schedkit (its worker, prefork,
concurrency 2, with and without kombu's ack emulation) against the same number sent ahead of
time as ETA messages to a plain Celery worker of the same size. Start lateness p50/p99, the
rate the burst drained at, worker RSS growth (peak minus idle) and bytes per task, the
hand-off and worker start rates read from schedkit's metrics endpoint (which side set the
pace), and the longest Lua call Redis logged during schedkit's burst (SLOWLOG).
"""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from common import Report, Result, Sizes, percentile, rss_bytes, wait_until
from parts import (
    celery_worker,
    dispatcher_processes,
    flush_celery_queue,
    fresh_prefix,
    schedkit_stack,
)
from prometheus_client.parser import text_string_to_metric_families

from schedkit.model import TaskRows, TaskSpec, TaskState
from schedkit.runtime.embedded import free_port
from schedkit.service.schedules import Schedules
from schedkit.service.servicer import SPEC_FIELDS
from schedkit.settings import Settings
from schedkit.store.store import Store

WINDOW = 30.0  # schedkit's default hand-off window


def _park(store: Store, settings: Settings, count: int, run_at: datetime) -> None:
    """``count`` ``add`` tasks at ``run_at``, stored as the server would (in batches)."""
    from schedkit.demo import app as demo_app
    from schedkit.dispatch.registry import TaskRegistry

    schedules = Schedules(store, TaskRegistry(demo_app), settings)
    for first in range(0, count, 5000):
        specs = [TaskSpec("add", run_at, [n, 1]) for n in range(first, min(count, first + 5000))]
        prepared = schedules.prepare_rows(TaskRows.of_specs(specs), fields=SPEC_FIELDS)
        results = schedules.store_prepared(prepared)
        assert all(r.error is None for r in results), results[:3]


def _dispatchers(url: str, prefix: str, count: int) -> contextlib.AbstractContextManager[None]:
    """``count`` ``schedkit dispatch`` processes on the store at ``url``."""
    return dispatcher_processes(count, {"SCHEDKIT_PREFIX": prefix}, "--store", url)


def _schedkit_rate(url: str, sizes: Sizes, dispatchers: int) -> float:
    """Tasks/s from the instant ``handoff_tasks`` enter the window until all are QUEUED."""
    prefix = fresh_prefix()
    settings = Settings(store_url=url, prefix=prefix)
    store = Store.for_settings(settings)
    count = sizes.handoff_tasks
    try:
        lead = 8.0 + count / 5000  # time to park them and start the dispatchers first
        enters = datetime.now(UTC) + timedelta(seconds=lead)
        _park(store, settings, count, enters + timedelta(seconds=WINDOW))
        with _dispatchers(url, prefix, dispatchers):
            wait = (enters - datetime.now(UTC)).total_seconds()
            assert wait > 0, "parking took longer than the lead: raise it"
            time.sleep(wait)  # until the burst enters the window (the dispatchers wait too)
            began = time.monotonic()
            # Polled every 10 ms, not wait_until's 50: a burst of 20,000 takes under a second.
            while store.count(TaskState.QUEUED) < count:
                assert time.monotonic() - began < 600, "timed out waiting for every hand-off"
                time.sleep(0.01)
            took = time.monotonic() - began
    finally:
        store.close()
    flush_celery_queue(url)
    return count / took


def handoff_rate(report: Report, sizes: Sizes, url: str) -> None:
    """schedkit with 1 and 2 dispatcher processes, then the bare apply_async loop."""
    for dispatchers in (1, 2):
        rates = [_schedkit_rate(url, sizes, dispatchers) for _ in range(sizes.repeat)]
        report.add(
            Result(
                "hand-off rate", f"schedkit, {dispatchers} dispatcher process"
                + ("es" if dispatchers > 1 else ""), "tasks/s", rates,
                note=f"{sizes.handoff_tasks:,} tasks entering the window at one instant",
                higher_is_better=True,
            )
        )  # fmt: skip
    from fixtures import schedule_celery_task

    at = datetime.now(UTC) + timedelta(days=1)
    count = max(sizes.handoff_tasks // 10, 100)

    def loop() -> float:
        began = time.perf_counter()
        for n in range(count):
            schedule_celery_task.apply_async(args=[n], eta=at)
        return count / (time.perf_counter() - began)

    rates = [loop() for _ in range(sizes.repeat)]
    report.add(
        Result(
            "hand-off rate", "bare apply_async(eta) loop", "tasks/s", rates,
            note=f"{count:,} calls in one process", higher_is_better=True,
        )
    )  # fmt: skip
    flush_celery_queue(url)


class _Peak:
    """The highest RSS of a process tree, sampled every 0.2 s until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak


def _idle_rss(pid: int) -> int:
    """RSS once it stops moving (a worker that just started is still importing)."""
    last = -1
    for _ in range(20):
        now = rss_bytes(pid)
        if abs(now - last) < 256 * 1024:
            return now
        last = now
        time.sleep(0.5)  # polling a process that has no readiness signal
    return last


def _burst_results(
    report: Report, who: str, late_ms: list[float], drain: float, idle: int, peak: int, n: int
) -> None:
    note = f"{n:,} tasks due at one instant, one worker, prefork, concurrency 2"
    for q, name in ((50, "p50"), (99, "p99")):
        report.add(Result(f"burst: start lateness {name}", who, "ms",
                          [percentile(late_ms, q)], note=note))  # fmt: skip
    report.add(Result("burst: drain rate", who, "tasks/s", [drain], note=note,
                      higher_is_better=True))  # fmt: skip
    growth = max(0, peak - idle)
    per_task = f"{growth / n:,.0f} bytes per task; idle {idle / 1e6:.0f} MB"
    report.add(Result("burst: worker RSS growth", who, "MB", [growth / 1e6], note=per_task))


def _longest_lua_ms(client: redis.Redis) -> dict[str, float]:
    """The longest call of each schedkit script SLOWLOG kept (calls over 1 ms here), in ms."""
    from schedkit.dispatch import leases
    from schedkit.store import schedules
    from schedkit.store.scripts import SCRIPTS, script_text

    texts = {name: script_text(name) for name in SCRIPTS}
    # The worker's start guard runs the run guard and the start as one script.
    texts["start"] = script_text("run_guard", "start")
    # What dispatchers also call: the materializer's schedule scripts, the partition leases.
    for name, parts in schedules._SCRIPTS.items():
        texts[f"schedules {name}"] = script_text(*schedules._SCHED, *parts)
    texts["lease renew"], texts["lease release"] = leases._RENEW, leases._RELEASE
    names = {client.script_load(text): name for name, text in texts.items()}
    longest: dict[str, float] = {}
    for entry in client.slowlog_get(100_000):
        words = bytes(entry.get("command", b"")).split()
        if len(words) > 1 and words[0].upper() == b"EVALSHA":
            name = names.get(words[1].decode(), "other")
            longest[name] = max(longest.get(name, 0.0), entry["duration"] / 1000)
    return longest


#: The metrics the burst reads from schedkit's endpoint (labelled series are summed).
_WATCHED = (
    "schedkit_tasks_handed_off_total",
    "schedkit_tasks_started_total",
    "schedkit_tasks_in_flight",
    "schedkit_tasks_overdue",
)


class _Metrics:
    """schedkit's /metrics read every 0.25 s during a burst, as a user's Prometheus would:
    the hand-off and start rates over the burst and what was in flight, so the report says
    which side set the pace (docs/operations.md, "add dispatchers or workers?")."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def read(self) -> dict[str, float]:
        """One scrape: the watched series, summed over their labels."""
        with urllib.request.urlopen(self.url, timeout=5) as reply:
            text = reply.read().decode()
        values = dict.fromkeys(_WATCHED, 0.0)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in values:
                    values[sample.name] += sample.value
        return values

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.samples.append((time.monotonic(), self.read()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.samples.append((time.monotonic(), self.read()))

    def report(self, report: Report, who: str, since: float, bound: int, note: str) -> None:
        """Hand-off and start rates from ``since`` (the instant, monotonic) until each
        counter reached its last value, and which side set the pace."""
        after = [(t, v) for t, v in self.samples if t >= since]
        before = [v for t, v in self.samples if t < since] or [after[0][1]]

        def rate(name: str) -> float:
            first, last = before[-1][name], after[-1][1][name]
            done = next(t for t, v in after if v[name] >= last)
            return (last - first) / max(done - since, 0.25)

        handed = rate("schedkit_tasks_handed_off_total")
        started = rate("schedkit_tasks_started_total")
        waiting = [v for _, v in after if v["schedkit_tasks_overdue"] > 0]
        full = sum(v["schedkit_tasks_in_flight"] >= 0.8 * bound for v in waiting)
        if not waiting:
            pace = "nothing waited in the store"
        elif full >= len(waiting) / 2:
            pace = "in flight at the bound while tasks waited: the workers set the pace"
        else:
            pace = "in flight below the bound while tasks waited: the dispatcher set the pace"
        most = max(v["schedkit_tasks_in_flight"] for _, v in after)
        where = f"{note}; {pace} (most in flight {most:,.0f}, bound {bound:,})"
        for name, value in (("hand-off", handed), ("worker start", started)):
            report.add(Result(f"burst: {name} rate (metrics)", who, "tasks/s", [value],
                              note=where, higher_is_better=True))  # fmt: skip


def schedkit_burst(report: Report, sizes: Sizes, url: str, *, ack_emulation: bool = True) -> None:
    """``burst_tasks`` due at one instant through schedkit; without ``ack_emulation`` its
    worker runs with SCHEDKIT_WORKER_ACK_EMULATION=0."""
    count = sizes.burst_tasks
    probe = redis.Redis.from_url(url)
    who = "schedkit" if ack_emulation else "schedkit, SCHEDKIT_WORKER_ACK_EMULATION=0"
    # The plain Celery worker below logs at WARNING: so does this one (INFO costs three lines
    # per task).
    port = free_port()
    with schedkit_stack(
        url,
        worker=True,
        worker_loglevel="WARNING",
        metrics_port=port,
        worker_ack_emulation=ack_emulation,
    ) as stack:
        assert stack.store is not None
        assert stack.worker is not None
        idle = _idle_rss(stack.worker.pid)
        peak = _Peak(stack.worker.pid)
        at = datetime.now(UTC) + timedelta(seconds=5 + count / 5000)
        _park(stack.store, stack.settings, count, at)
        # From here on: the claims, hand-offs, starts and finishes of the burst.
        probe.config_set("slowlog-log-slower-than", 1000)
        probe.config_set("slowlog-max-len", 100_000)
        probe.slowlog_reset()
        store = stack.store
        metrics = _Metrics(port)
        instant = time.monotonic() + (at - datetime.now(UTC)).total_seconds()
        wait_until(
            lambda: store.count(TaskState.SUCCEEDED) >= count,
            120 + count / 50,
            "the schedkit burst to run",
        )
        top = peak.stop()
        metrics.stop()
        metrics.report(report, who, instant, stack.settings.max_in_flight, f"{count:,} tasks")
        longest = _longest_lua_ms(probe)
        records = _all_records(store)
    probe.config_set("slowlog-log-slower-than", 10_000)
    probe.close()
    starts = [r.started_at for r in records if r.started_at is not None]
    late = [(s - at).total_seconds() * 1000 for s in starts]
    drain = count / max((max(starts) - at).total_seconds(), 1e-3)
    _burst_results(report, who, late, drain, idle, top, count)
    during = "while the burst was claimed, handed off and run; per script: " + ", ".join(
        f"{name} {ms:.1f}" for name, ms in sorted(longest.items())
    )
    report.add(
        Result("burst: longest Lua call", who, "ms", [max(longest.values(), default=0.0)],
               note=during)
    )  # fmt: skip
    flush_celery_queue(url)


def _all_records(store: Store) -> list[Any]:
    records: list[Any] = []
    ids = store.redis.zrange(store.keys.state("SUCCEEDED"), 0, -1)
    for first in range(0, len(ids), 5000):
        records += [r for r in store.get_many(ids[first : first + 5000]) if r is not None]
    return records


def celery_burst(report: Report, sizes: Sizes, url: str) -> None:
    """The same burst as ETA messages sent ahead of time to a plain Celery worker."""
    from fixtures import LATENESS_KEY, celery

    count = sizes.burst_tasks
    client = redis.Redis.from_url(url)
    client.delete(LATENESS_KEY)
    with celery_worker(url) as worker:
        idle = _idle_rss(worker.pid)
        peak = _Peak(worker.pid)
        # Time to send them all first: apply_async runs at 1,500-3,000/s here.
        at = datetime.now(UTC) + timedelta(seconds=10 + count / 1000)
        with celery.producer_or_acquire() as producer:
            task = celery.tasks["schedule_celery_task"]
            for n in range(count):
                task.apply_async(args=[n], eta=at, producer=producer)
        assert datetime.now(UTC) < at, "sending took longer than the lead: raise it"
        wait_until(lambda: client.llen(LATENESS_KEY) >= count, 120 + count / 50, "the Celery burst")
        top = peak.stop()
        late = [float(v) * 1000 for v in client.lrange(LATENESS_KEY, 0, -1)]
    client.delete(LATENESS_KEY)
    client.close()
    drain = count / max(max(late) / 1000, 1e-3)
    _burst_results(report, "plain Celery worker, ETA", late, drain, idle, top, count)
    flush_celery_queue(url)


def claim_calls(report: Report, sizes: Sizes, url: str) -> None:
    """How long one claim script call holds Redis over ``burst_tasks`` parked due tasks, with
    nothing else running: rounds of claims as the dispatcher takes them (up to 100), then as
    many while Redis rewrites its append-only file (a fork: writes copy the pages they touch). It
    tells Redis's own time per call apart from the burst's, where SLOWLOG also counts the time
    Redis waited for a core it shares with the worker and the dispatcher."""
    count = sizes.burst_tasks
    settings = Settings(store_url=url, prefix=fresh_prefix())
    batch = settings.claim_batch  # what one dispatcher round claims
    rounds = max(1, min(100, count // (2 * batch)))  # a share of the tasks for each phase
    store = Store.for_settings(settings)
    probe = redis.Redis.from_url(url)
    percentage = probe.config_get("auto-aof-rewrite-percentage")["auto-aof-rewrite-percentage"]
    at = datetime.now(UTC) + timedelta(seconds=1)
    try:
        _park(store, settings, count, at)
        time.sleep(max(0.0, (at - datetime.now(UTC)).total_seconds()))  # until they are due
        # No rewrite but the one started below: the quiet rounds stay quiet.
        probe.config_set("auto-aof-rewrite-percentage", 0)
        _no_rewrite(probe)
        probe.config_set("slowlog-log-slower-than", 0)
        probe.config_set("slowlog-max-len", 100_000)
        note = f"{count:,} tasks parked, due; {rounds} rounds of {batch:,}, nothing else running"
        for phase, rewrite in (("quiet", False), ("during an append-only file rewrite", True)):
            probe.slowlog_reset()
            if rewrite:
                probe.bgrewriteaof()
            for _ in range(rounds):
                store.claim(window_seconds=WINDOW, lease_seconds=3600, limit=batch)
            rewriting = bool(probe.info("persistence")["aof_rewrite_in_progress"])
            longest = _longest_lua_ms(probe).get("claim", 0.0)
            label = f"{note}; rewrite still running at the end: {rewriting}" if rewrite else note
            report.add(Result(f"claim call, longest ({phase})", "schedkit", "ms", [longest],
                              note=label))  # fmt: skip
    finally:
        probe.config_set("slowlog-log-slower-than", 10_000)
        _no_rewrite(probe)  # the next measure gets Redis without one
        probe.config_set("auto-aof-rewrite-percentage", percentage)
        probe.close()
        store.close()


def _no_rewrite(probe: redis.Redis) -> None:
    """Wait for an append-only file rewrite in progress to end."""
    wait_until(
        lambda: not probe.info("persistence")["aof_rewrite_in_progress"],
        300,
        "the append-only file rewrite to end",
    )


def celery_queued(report: Report, sizes: Sizes, url: str) -> None:
    """The same number of tasks already waiting in the queue, without ETA, when a plain Celery
    worker of the same size starts: how fast that worker drains a burst it receives while it
    runs it, as schedkit's worker does (the ETA side received its burst before the instant).
    From the first start to the last, and the worker's RSS growth."""
    from fixtures import STARTS_KEY, celery

    count = sizes.burst_tasks
    client = redis.Redis.from_url(url)
    client.delete(STARTS_KEY)
    with celery.producer_or_acquire() as producer:
        task = celery.tasks["schedule_celery_task"]
        for n in range(count):
            task.apply_async(args=[n], producer=producer)
    with celery_worker(url) as worker:
        idle = rss_bytes(worker.pid)  # it starts on the queue at once: no quiet moment
        peak = _Peak(worker.pid)
        wait_until(lambda: client.llen(STARTS_KEY) >= count, 120 + count / 50, "the queue")
        top = peak.stop()
        starts = [float(v) for v in client.lrange(STARTS_KEY, 0, -1)]
    client.delete(STARTS_KEY)
    client.close()
    who = "plain Celery worker, the burst queued"
    note = (
        f"{count:,} tasks waiting in the queue (no ETA) when the worker starts; first to last start"
    )
    drain = count / max(max(starts) - min(starts), 1e-3)
    report.add(Result("burst: drain rate", who, "tasks/s", [drain], note=note,
                      higher_is_better=True))  # fmt: skip
    growth = max(0, top - idle)
    per_task = f"{growth / count:,.0f} bytes per task; from its first reading"
    report.add(Result("burst: worker RSS growth", who, "MB", [growth / 1e6], note=per_task))
    flush_celery_queue(url)
