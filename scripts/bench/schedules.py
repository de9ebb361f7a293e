"""Recurring schedules: many schedules running once a minute, materialized by dispatchers.

Measured in one run, on one Redis of its own:

- store memory per schedule: the schedule record, its runs index and the runs its lookahead
  keeps parked, against what a user does instead, a recurring timetable row expanded over
  the default 7-day horizon (10,080 parked tasks for a once-a-minute row);
- materialization: simulated minutes (the materializers' clock moved a minute at a time)
  with N schedules each due once a minute; the real seconds one minute's work takes on one
  and on three materializers, and how far ahead of "now" the earliest schedule's cursor
  stays (the lookahead kept: it should stay near the configured 300 s, never below 0).

Start lateness of the runs themselves is the hand-off's, measured by latency.py: a run is an
ordinary parked task.

    .venv/bin/python scripts/bench/schedules.py --schedules 20000 --minutes 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from schedkit.dispatch.materialize import Materializer
from schedkit.model import EPOCH, TaskSpec, to_millis
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--schedules", type=int, default=20_000)
    parser.add_argument("--minutes", type=int, default=3)
    parser.add_argument("--dispatchers", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run(args.schedules, args.minutes, args.dispatchers, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
