"""Prometheus metrics, read from the store at scrape time.

The counts live in the store (``{prefix}:stats``, incremented by the same Lua script as the
change they count), not in process memory: Celery's prefork children, several servers and
several dispatchers all add to one set of totals, which survive restarts. Any process that
reaches the store can serve them; every instance shows the same, cluster-wide values.

=====================================  =======  ================================================
metric                                 type     meaning
=====================================  =======  ================================================
schedkit_tasks_scheduled_total         counter  tasks created (re-sent keys not counted)
schedkit_tasks_handed_off_total        counter  tasks the dispatcher gave to the broker
schedkit_tasks_redelivered_total       counter  hand-offs no worker started within the
                                                visibility timeout, handed off again
schedkit_tasks_started_total           counter  task starts the worker hook allowed
schedkit_tasks_finished_total{state}   counter  tasks reaching SUCCEEDED, FAILED, CANCELLED or
                                                EXPIRED
schedkit_tasks_retried_total           counter  Celery retries (task went to RETRYING)
schedkit_starts_refused_total{reason}  counter  deliveries the hook refused: cancelled or
                                                duplicate (a second start of one task)
schedkit_start_lateness_seconds        histo    first start minus run time
schedkit_tasks_parked                  gauge    tasks waiting in the store (SCHEDULED)
schedkit_tasks{state}                  gauge    tasks in each state now (until purged)
schedkit_dispatcher_lag_seconds        gauge    how long the oldest overdue SCHEDULED task is
                                                past its run time; 0 when none is overdue
schedkit_claims_in_flight              gauge    tasks claimed by a dispatcher, not yet settled
schedkit_tasks_in_flight{queue}        gauge    per queue, tasks handed off (or claimed) and not
                                                yet started: what max_in_flight bounds
schedkit_tasks_overdue                 gauge    SCHEDULED tasks whose run time has come: a burst
                                                waiting for room, or for a dispatcher
=====================================  =======  ================================================
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from schedkit.errors import Unavailable
from schedkit.model import FINAL_STATES, LATENESS_BUCKETS_MS, TaskState, to_millis, utc_now
from schedkit.store.connect import store_errors
from schedkit.store.keys import Stat
from schedkit.store.store import Store

log = logging.getLogger(__name__)


class StoreCollector(Collector):
    """Collects schedkit's metrics from one store on every scrape."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        """Read the totals and gauges in one round trip; nothing when the store is down."""
        try:
            stats, states, first, claims, flight, overdue = self._read()
        except Unavailable as exc:
            # Missing series (not zeros) tell the scraper the store could not be read.
            log.warning("metrics: %s", exc)
            up = GaugeMetricFamily("schedkit_store_up", "1 when the store answered the scrape")
            up.add_metric([], 0)
            yield up
            return
        up = GaugeMetricFamily("schedkit_store_up", "1 when the store answered the scrape")
        up.add_metric([], 1)
        yield up
        yield from _totals(stats)
        yield from _gauges(states, first, claims)
        yield from _flight(flight, overdue)

    def _read(
        self,
    ) -> tuple[dict[str, str], dict[str, int], int | None, int, dict[str, str], int]:
        now = to_millis(utc_now())
        with store_errors():
            pipe = self.store.redis.pipeline(transaction=False)
            for keys in self.store.parts:
                pipe.hgetall(keys.stats)
                for state in TaskState:
                    pipe.zcard(keys.state(state.value))
                pipe.zrange(keys.state("SCHEDULED"), 0, 0, withscores=True)
                pipe.zcard(keys.claims)
                pipe.hgetall(keys.flight)
                pipe.zcount(keys.state("SCHEDULED"), "-inf", now)
            replies = pipe.execute()
        # Every partition counts its own tasks: the store's figures are their sums.
        stats: dict[str, str] = {}
        states = {state.value: 0 for state in TaskState}
        firsts: list[int] = []
        claims, overdue = 0, 0
        flight: dict[str, str] = {}
        per_part = len(TaskState) + 5
        for first_reply in range(0, len(replies), per_part):
            part = replies[first_reply : first_reply + per_part]
            for name, value in part[0].items():
                stats[name] = str(int(stats.get(name, 0)) + int(value))
            for state, size in zip(TaskState, part[1:-4], strict=True):
                states[state.value] += int(size)
            if part[-4]:
                firsts.append(int(float(part[-4][0][1])))
            claims += int(part[-3])
            for queue, size in part[-2].items():
                flight[queue] = str(int(flight.get(queue, 0)) + int(size))
            overdue += int(part[-1])
        first = min(firsts) if firsts else None
        return stats, states, first, claims, flight, overdue


@dataclass
class MetricsServer:
    """The running /metrics endpoint; ``port`` is the bound port."""

    http: WSGIServer
    thread: threading.Thread
    port: int

    def stop(self) -> None:
        """Stop serving."""
        self.http.shutdown()
        self.http.server_close()
        self.thread.join(5)


def serve_metrics(store: Store, *, port: int, addr: str = "127.0.0.1") -> MetricsServer:
    """Serve the store's metrics at http://addr:port/metrics in a daemon thread."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    http, thread = start_http_server(port, addr=addr, registry=registry)
    bound = int(http.server_address[1])
    log.info("metrics on http://%s:%d/metrics", addr, bound)
    return MetricsServer(http, thread, bound)


def _totals(stats: dict[str, str]) -> Iterator[Metric]:
    """The running totals the scripts count: tasks by what happened, and start lateness."""

    def total(name: str) -> int:
        return int(stats.get(name, 0))

    for name, field, doc in (
        ("schedkit_tasks_scheduled", Stat.SCHEDULED, "Tasks created"),
        ("schedkit_tasks_handed_off", Stat.HANDED, "Tasks handed to the broker"),
        (
            "schedkit_tasks_redelivered",
            Stat.REDELIVERED,
            "Hand-offs no worker started within the visibility timeout, handed off again",
        ),
        ("schedkit_tasks_started", Stat.STARTED, "Task starts allowed by the worker hook"),
        ("schedkit_tasks_retried", Stat.RETRIED, "Celery retries of schedkit tasks"),
    ):
        counter = CounterMetricFamily(name, doc)
        counter.add_metric([], total(field))
        yield counter
    finished = CounterMetricFamily(
        "schedkit_tasks_finished", "Tasks that reached a final state", labels=["state"]
    )
    for final in TaskState:  # declaration order: the series keep one order
        if final in FINAL_STATES:
            finished.add_metric([final.value], total(Stat.FINISHED + final.value))
    yield finished
    refused = CounterMetricFamily(
        "schedkit_starts_refused", "Deliveries the worker hook refused", labels=["reason"]
    )
    for reason, field in (
        ("cancelled", Stat.REFUSED_CANCELLED),
        ("duplicate", Stat.REFUSED_DUPLICATE),
    ):
        refused.add_metric([reason], total(field))
    yield refused
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound in LATENESS_BUCKETS_MS:
        running += total(f"{Stat.LATE}{bound}")
        buckets.append((repr(bound / 1000), running))
    running += total(Stat.LATE_INF)
    buckets.append(("+Inf", running))
    yield HistogramMetricFamily(
        "schedkit_start_lateness_seconds",
        "First start of a task minus its run time",
        buckets=buckets,
        sum_value=total(Stat.LATE_SUM_MS) / 1000,
    )


def _gauges(states: dict[str, int], first: int | None, claims: int) -> Iterator[Metric]:
    """What the store holds now: tasks by state, the dispatcher's lag, claims in flight."""
    parked = GaugeMetricFamily("schedkit_tasks_parked", "Tasks waiting in the store")
    parked.add_metric([], states["SCHEDULED"])
    yield parked
    by_state = GaugeMetricFamily("schedkit_tasks", "Tasks in each state", labels=["state"])
    for state, size in states.items():
        by_state.add_metric([state], size)
    yield by_state
    lag = 0.0
    if first is not None:
        lag = max(0.0, (to_millis(utc_now()) - first) / 1000)
    dispatcher_lag = GaugeMetricFamily(
        "schedkit_dispatcher_lag_seconds",
        "How far the oldest overdue SCHEDULED task is past its run time",
    )
    dispatcher_lag.add_metric([], lag)
    yield dispatcher_lag
    in_flight = GaugeMetricFamily(
        "schedkit_claims_in_flight", "Tasks claimed by a dispatcher, not yet settled"
    )
    in_flight.add_metric([], claims)
    yield in_flight


def _flight(flight: dict[str, str], overdue: int) -> Iterator[Metric]:
    """Where a burst waits: handed off and not started, per queue; due and still parked."""
    in_flight = GaugeMetricFamily(
        "schedkit_tasks_in_flight",
        "Per queue, tasks handed off (or claimed) and not yet started",
        labels=["queue"],
    )
    for queue, size in sorted(flight.items()):
        in_flight.add_metric([queue or "default"], max(0, int(size)))
    yield in_flight
    waiting = GaugeMetricFamily("schedkit_tasks_overdue", "SCHEDULED tasks whose run time has come")
    waiting.add_metric([], overdue)
    yield waiting
