"""Recurring schedules: many schedules running once a minute, materialized by dispatchers.

Measured in one run, on one Redis of its own:

- store memory per schedule: the schedule record, its runs index and the runs its lookahead
  keeps parked, against what a user does instead, a recurring timetable row expanded over
  the default 7-day horizon (10,080 parked tasks for a once-a-minute row);
- materialization: simulated minutes (the materializers' clock moved a minute at a time)
  with N schedules each due once a minute; the real seconds one minute's work takes on one
  and on three materializers, and how far ahead of "now" the earliest schedule's cursor
  stays (the lookahead kept: it should stay near the configured 300 s, never below 0).

- start lateness, in real time: ``--live`` schedules (cron ``* * * * *``) through a schedkit
  stack with its worker, against Celery beat with as many once-a-minute entries and a plain
  Celery worker of the same size (prefork, concurrency 2): how late each run of one minute
  boundary starts after it, p50 and p99. With many schedules due at one boundary this is a
  burst, so the workers' start rate bounds both sides (see burst.py for the hand-off side).

    .venv/bin/python scripts/bench/schedules.py --schedules 100000 --minutes 2 --live 1000
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis
from common import PYTHON, percentile, wait_until
from parts import bench_redis, celery_worker, env_for, flush_celery_queue, schedkit_stack

from schedkit.dispatch.materialize import Materializer
from schedkit.model import EPOCH, TaskSpec, TaskState, to_millis
from schedkit.recurrence import Recurrence
from schedkit.recurring import ScheduleDef
from schedkit.runtime.embedded import RedisServer
from schedkit.settings import Settings
from schedkit.store.record import (
    NewTasks,
    encode_template,
    template_row,
)
from schedkit.store.schedules import ScheduleStore
from schedkit.store.store import Store

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def used_memory(store: Store) -> int:
    """Redis used_memory, in bytes."""
    return int(store.redis.info("memory")["used_memory"])


def create(schedules: ScheduleStore, n: int, now: datetime) -> None:
    """``n`` schedules, each once a minute (every 60 s), calling water_plants."""
    definition = ScheduleDef(
        Recurrence(every=timedelta(minutes=1)), TaskSpec("water_plants", EPOCH, ["fern"])
    )
    for i in range(n):
        schedules.create(f"s{i:07d}", definition, cursor=now, max_schedules=10**8, now=now)


def minute(materializers: list[Materializer], now: datetime) -> float:
    """Seconds the materializers take, side by side, to catch up with ``now``."""
    started = time.perf_counter()
    threads = [threading.Thread(target=m.run_until_idle, args=(now, 10**6)) for m in materializers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def lookahead_kept(store: Store, now: datetime) -> float:
    """How far ahead of ``now`` the earliest cursor is, in seconds (the lookahead kept)."""
    pipe = store.redis.pipeline(transaction=False)
    ids = store.redis.zrange(store.keys.schedules, 0, -1)
    for sid in ids:
        pipe.hget(store.keys.schedule(sid), "cur")
    cursors = [int(c) for c in pipe.execute()]
    return (min(cursors) - to_millis(now)) / 1000


def expanded_row_bytes(store: Store, runs: int) -> float:
    """Store bytes of one recurring timetable row expanded into ``runs`` parked tasks."""
    spec = TaskSpec("water_plants", EPOCH, ["fern"], labels={"source": "timetable.csv"})
    template = encode_template(spec)
    rows = [
        template_row(template, f"kx{i:011d}", f"row-1:{i}", to_millis(T0) + 60_000 * i, 0)
        for i in range(runs)
    ]
    before = used_memory(store)
    for first in range(0, runs, 5000):
        store.schedule_new(
            NewTasks([template.fields], rows[first : first + 5000], 0), window_seconds=0
        )
    return used_memory(store) - before


def run(n: int, minutes: int, dispatchers: int, data_dir: Path) -> None:
    settings = Settings()
    lookahead = settings.schedule_lookahead
    with RedisServer(data_dir=data_dir, appendonly=False) as server:
        store = Store.from_url(server.url, prefix="bench")
        schedules = ScheduleStore(store)
        # What a user does instead, measured first, on the empty store.
        expanded = expanded_row_bytes(store, 10_080)
        base = used_memory(store)
        create(schedules, n, T0)
        records = used_memory(store) - base
        clock_now = T0
        solo = [Materializer(store, settings)]
        first = minute(solo, clock_now)
        per_schedule = (used_memory(store) - base) / n
        print(f"machine: {n:,} schedules, once a minute each, lookahead {lookahead:.0f} s")
        print(f"first materialization ({n:,} schedules x {lookahead / 60:.0f} runs): {first:.2f} s")
        print(
            f"store memory per schedule: record {records / n:.0f} B; "
            f"with its parked lookahead runs {per_schedule:.0f} B"
        )
        stores = [Store.from_url(server.url, prefix="bench") for _ in range(dispatchers)]
        for label, parts in (
            ("1 materializer", solo),
            (f"{dispatchers} materializers", [Materializer(s, settings) for s in stores]),
        ):
            took = []
            for _ in range(minutes):
                clock_now += timedelta(minutes=1)
                took.append(minute(parts, clock_now))
            kept = lookahead_kept(store, clock_now)
            worst = max(took)
            print(
                f"{label}: a simulated minute's runs made in {sum(took) / len(took):.2f} s "
                f"(worst {worst:.2f} s; keeps up {60 / worst:.0f}x over); "
                f"lookahead kept {kept:.0f} s"
            )
        print(
            f"instead, a recurring timetable row over the 7-day horizon: {expanded:,.0f} B "
            f"(10,080 parked tasks); ratio {expanded / per_schedule:.0f}x the schedule"
        )
        for s in stores:
            s.close()
        store.close()


def _boundary(lead: float) -> datetime:
    """The first minute boundary at least ``lead`` seconds from now."""
    soon = datetime.now(UTC) + timedelta(seconds=lead)
    return soon.replace(second=0, microsecond=0) + timedelta(minutes=1)


def _wait_for(boundary: datetime) -> None:
    time.sleep(max(0.0, (boundary - datetime.now(UTC)).total_seconds()))


def schedkit_live(url: str, n: int) -> list[float]:
    """Seconds each run of ``n`` once-a-minute schedules started after its minute boundary."""
    with schedkit_stack(url, worker=True, worker_loglevel="WARNING") as stack:
        assert stack.store is not None
        store = stack.store
        schedules = ScheduleStore(store)
        definition = ScheduleDef(Recurrence(cron=("* * * * *",)), TaskSpec("add", EPOCH, [1, 2]))
        now = datetime.now(UTC)
        for i in range(n):
            schedules.create(f"live{i:05d}", definition, cursor=now, max_schedules=10**8, now=now)
        boundary = _boundary(lead=15)
        at = to_millis(boundary)
        succeeded = store.keys.state(TaskState.SUCCEEDED.value)
        _wait_for(boundary)
        wait_until(lambda: store.redis.zcount(succeeded, at, at) >= n, 120, "schedkit's runs")
        ids = store.redis.zrangebyscore(succeeded, at, at)
        records = [r for r in store.get_many(ids) if r is not None and r.started_at]
        late = [(r.started_at - boundary).total_seconds() for r in records if r.started_at]
    flush_celery_queue(url)
    return late


def beat_live(url: str, n: int, data_dir: Path) -> list[float]:
    """The same with Celery beat: ``n`` entries once a minute, a plain Celery worker."""
    from fixtures import BEAT_LATENESS_KEY

    probe = redis.Redis.from_url(url)
    probe.delete(BEAT_LATENESS_KEY)
    with celery_worker(url):
        beat = subprocess.Popen(
            [PYTHON, "-m", "celery", "-A", "fixtures:celery", "beat", "--loglevel=WARNING",
             "-s", str(data_dir / "beat-schedule")],
            env={**env_for(url), "BENCH_BEAT_ENTRIES": str(n)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            boundary = _boundary(lead=10)
            nominal = f"{boundary.timestamp():.0f} "

            def ticks() -> list[float]:
                entries = [e.decode() for e in probe.lrange(BEAT_LATENESS_KEY, 0, -1)]
                return [float(e.split()[1]) for e in entries if e.startswith(nominal)]

            _wait_for(boundary)
            wait_until(lambda: len(ticks()) >= n, 120, "Celery beat's runs")
            late = ticks()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(beat.pid, signal.SIGKILL)
            beat.wait(30)
    probe.delete(BEAT_LATENESS_KEY)
    probe.close()
    flush_celery_queue(url)
    return late


def live(n: int, data_dir: Path) -> None:
    """Start lateness at one minute boundary: schedkit against Celery beat, in one run."""
    with bench_redis(data_dir) as server:
        os.environ["BENCH_REDIS_URL"] = server.url  # read by the fixtures on import
        ours = schedkit_live(server.url, n)
        beat = beat_live(server.url, n, data_dir)
    print(f"start lateness, {n:,} schedules due at one minute boundary, one worker each side:")
    for q in (50, 99):
        mine, theirs = percentile(ours, q), percentile(beat, q)
        print(
            f"  p{q}: schedkit {mine * 1000:,.0f} ms, Celery beat {theirs * 1000:,.0f} ms "
            f"(ratio {mine / max(theirs, 1e-9):.2f}x)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--schedules", type=int, default=100_000)
    parser.add_argument("--minutes", type=int, default=2)
    parser.add_argument("--dispatchers", type=int, default=3)
    parser.add_argument("--live", type=int, default=1000, help="0: skip the real-time part")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.schedules:
            run(args.schedules, args.minutes, args.dispatchers, Path(tmp))
        if args.live:
            live(args.live, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
