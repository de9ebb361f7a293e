"""Materialization: the dispatchers turn recurring schedules into ordinary parked tasks.

Leaderless, like claims: every dispatcher takes schedules due (``scdue``, each moved a lease
ahead so the others pass it by), computes the
nominal times from each one's cursor to ``now + schedule_lookahead``, and stores those runs
with the cursor's advance in one script that first checks the schedule is still at the
generation and cursor it read. A dispatcher that lost the race, or read before a pause or an
update, stores nothing; and a run's id is derived from (schedule id, nominal time), so even a
run stored twice is one task.

A schedule lives in the store partition its id hashes to, and its runs with it; a dispatcher
materializes the partitions it serves (its leases), so each partition's schedules load the
primary that partition is on. Two dispatchers serving one partition for a moment (a lease
changing hands) are safe: taking due schedules is atomic per partition.

After an outage a schedule's cursor lies in the past: nominal times older than its catch-up
window are passed over, the rest are made (and run at once), or only the latest of them when
the schedule coalesces. Resume moves the cursor to now,
so a paused period makes no runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from schedkit.model import utc_now
from schedkit.recurrence import Recurrence
from schedkit.recurring import ScheduleRecord, run_spec
from schedkit.settings import Settings
from schedkit.store.schedules import RunsOutcome, RunsPlan, ScheduleStore
from schedkit.store.store import Store

log = logging.getLogger(__name__)

#: Most schedules one round reads, and most runs one schedule makes in a round; the rest
#: stay due and the next round continues.
SCHEDULES_PER_ROUND = 200
RUNS_PER_ROUND = 1000
#: Schedules a materializer took are passed by the others this long, unless it finishes.
TAKE_LEASE_SECONDS = 30.0
_AHEAD_LIMIT = timedelta(days=3660)
_MICRO = timedelta(microseconds=1)
_MILLI = timedelta(milliseconds=1)


class Materializer:
    """Makes the runs of due schedules; any number may run against one store."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.schedules = ScheduleStore(store)
        self.settings = settings
        self.clock = clock

    @property
    def lookahead(self) -> timedelta:
        """How far ahead runs are parked."""
        return timedelta(seconds=self.settings.schedule_lookahead)

    def run_once(self, now: datetime | None = None, partitions: Sequence[int] | None = None) -> int:
        """One round over the schedules due at ``now`` in ``partitions`` (None: all);
        returns how many runs it made."""
        now = now or self.clock()
        ids = self.schedules.take_due(
            now, SCHEDULES_PER_ROUND, TAKE_LEASE_SECONDS, partitions=partitions
        )
        plans = []
        records = self.schedules.get_many(ids, now=now, recent=False)
        for schedule_id, record in zip(ids, records, strict=True):
            if record is None or record.paused:
                continue
            try:
                plans.append(self.plan(record, now))
            except Exception:
                # One schedule that cannot be computed must not stop the others (nor the
                # hand-off): it stays taken for the lease, and is tried again after it.
                log.exception("schedule %s: its runs could not be computed", schedule_id)
        # One round trip for the round's schedules: per schedule, one was most of the cost.
        outcomes = self.schedules.store_many(
            plans, window_seconds=self.settings.handoff_window, now=now
        )
        return sum(_created(outcome) for outcome in outcomes)

    def run_guarded(self, partitions: Sequence[int] | None = None) -> int:
        """:meth:`run_once` over ``partitions`` (None: all), its failure logged instead of
        raised: the dispatcher's round hands off parked work whatever happens to
        schedules."""
        if partitions is not None and not partitions:
            return 0
        try:
            return self.run_once(partitions=partitions)
        except Exception:
            log.exception("materializing schedules failed; the next round tries again")
            return 0

    def run_until_idle(self, now: datetime | None = None, rounds: int = 1000) -> int:
        """Rounds at one instant until nothing is due (catching up after an outage)."""
        now = now or self.clock()
        total = 0
        for _ in range(rounds):
            made = self.run_once(now)
            total += made
            if not self.schedules.due(now, 1):
                break
        return total

    def materialize(self, record: ScheduleRecord, now: datetime) -> int:
        """Store ``record``'s runs up to ``now + lookahead``; how many were created."""
        outcome = self.schedules.store_many(
            [self.plan(record, now)], window_seconds=self.settings.handoff_window, now=now
        )[0]
        return _created(outcome)

    def plan(self, record: ScheduleRecord, now: datetime) -> RunsPlan:
        """``record``'s runs from its cursor (or the catch-up window) to now + lookahead,
        and where its cursor and due time move."""
        definition = record.definition
        rec = definition.recurrence
        begin = max(record.cursor, now - definition.catchup_window)
        end = max(now + self.lookahead, record.cursor)
        left = definition.max_runs - record.run_count if definition.max_runs else RUNS_PER_ROUND
        limit = max(0, min(RUNS_PER_ROUND, left))
        missed: list[datetime] = []
        if definition.coalesce and begin < now and limit:
            # The runs missed while no dispatcher ran are one run, at the latest of them.
            latest = _latest_time(rec, begin, now)
            missed = [latest] if latest is not None else []
            begin = now
        times = missed + rec.times(begin, end, limit - len(missed)) if limit else []
        next_due: datetime | None
        if limit and len(times) == limit and len(times) < left:
            # More fall inside the lookahead than one round makes: continue right away.
            cursor, next_due = times[-1] + _MICRO, now
        else:
            cursor = end
            done = bool(definition.max_runs) and len(times) >= left
            following = [] if done else rec.times(end, end + _AHEAD_LIMIT, 1)
            # Due once the next time falls inside [now, now + lookahead): strictly after
            # following - lookahead, or a round at that very instant would make nothing.
            next_due = following[0] - self.lookahead + _MILLI if following else None
        runs = [(t, run_spec(record.id, definition, t)) for t in times]
        return RunsPlan(record, runs, advance=(cursor, next_due))


def _latest_time(rec: Recurrence, begin: datetime, end: datetime) -> datetime | None:
    """The last nominal time in ``[begin, end)``, read a round's worth at a time (the catch-up
    window bounds how many there are)."""
    latest = None
    while True:
        chunk = rec.times(begin, end, RUNS_PER_ROUND)
        if chunk:
            latest = chunk[-1]
        if len(chunk) < RUNS_PER_ROUND:
            return latest
        begin = chunk[-1] + _MICRO


def _created(outcome: RunsOutcome) -> int:
    if outcome.verdict != "made":
        log.debug("schedule runs not stored: %s", outcome.verdict)
    return sum(1 for r in outcome.results if r.outcome.value == "CREATED")
