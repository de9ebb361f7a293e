"""When recurring work runs: cron expressions and fixed intervals as instants, DST included.

Pure computation on the standard library and cronsim, shared by the timetable (client side)
and the dispatchers (which materialize server-side schedules), so both sides agree on every
instant. Times are half-open ranges ``[begin, end)`` of tz-aware datetimes; results are UTC.

- ``every`` is exact elapsed time from an anchor (``start``, else the epoch): DST never moves it.
- ``cron`` is read in a zone. With the ``cron`` DST rule it follows cron's own rules (cronsim):
  a wildcard hour runs every real hour, so an hourly cron runs 25 times on a fall-back day and
  23 times on a spring-forward day; a fixed hour in a gap runs at the gap's end, in an overlap
  once. With ``shift``, ``earliest`` or ``latest`` each matching wall time is placed by
  :func:`schedkit.timeutil.localize`, and runs that land on one instant run once.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Literal

from cronsim import CronSim, CronSimError

from schedkit.errors import InvalidArgument
from schedkit.timeutil import localize, zone

DstRule = Literal["cron", "shift", "earliest", "latest"]
DST_RULES: tuple[str, ...] = ("cron", "shift", "earliest", "latest")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MIN_EVERY = timedelta(seconds=1)
_SECOND = timedelta(seconds=1)
_MICRO = timedelta(microseconds=1)
# Wall-clock slack around a range when iterating naive wall times: covers any DST jump.
_WALL_SLACK = timedelta(hours=3)


class RecurrenceError(ValueError):
    """A recurrence that cannot be computed; the message says why."""


def check_cron(expr: str) -> None:
    """RecurrenceError unless ``expr`` is a cron expression cronsim accepts."""
    try:
        CronSim(expr, datetime(2000, 1, 1))
    except (CronSimError, ValueError) as exc:
        raise RecurrenceError(f"{expr!r} is not a cron expression: {exc}") from exc


def cron_matches(expr: str, tz: str | tzinfo, after: datetime) -> Iterator[datetime]:
    """Instants (UTC) strictly after ``after`` that ``expr`` matches in ``tz``, by cron's own
    DST rules, endless."""
    try:
        matches = CronSim(expr, after.astimezone(zone(tz)))
    except (CronSimError, ValueError) as exc:
        raise RecurrenceError(f"{expr!r} is not a cron expression: {exc}") from exc
    try:
        for moment in matches:
            yield moment.astimezone(UTC)
    except CronSimError as exc:  # an expression that never matches again
        raise RecurrenceError(f"{expr!r}: {exc}") from exc


def cron_times(
    expr: str, tz: str | tzinfo, dst: DstRule, begin: datetime, end: datetime
) -> Iterator[datetime]:
    """Instants in ``[begin, end)`` that ``expr`` matches in ``tz``, placed by ``dst``, in
    order, lazily: a range of years costs only what the caller takes."""
    if dst == "cron":
        for instant in cron_matches(expr, tz, begin - _MICRO):
            if instant >= end:
                return
            if instant >= begin:
                yield instant
        return
    where = zone(tz)
    wall_begin = begin.astimezone(where).replace(tzinfo=None) - _WALL_SLACK
    wall_end = end.astimezone(where).replace(tzinfo=None) + _WALL_SLACK
    try:
        walls = CronSim(expr, wall_begin - _SECOND)
    except (CronSimError, ValueError) as exc:
        raise RecurrenceError(f"{expr!r} is not a cron expression: {exc}") from exc
    # Placing wall times can reorder or merge them near a DST change (a gap shifted onto the
    # next hour): hold them in a heap until the wall clock is past them by more than any jump.
    pending: list[datetime] = []
    last: datetime | None = None
    try:
        for wall in walls:
            if wall >= wall_end:
                break
            instant = localize(wall, where, dst=dst, field="cron").astimezone(UTC)
            if begin <= instant < end:
                heapq.heappush(pending, instant)
            settled = wall.replace(tzinfo=UTC) - 2 * _WALL_SLACK - timedelta(hours=26)
            while pending and pending[0] < settled:
                moment = heapq.heappop(pending)
                if moment != last:
                    last = moment
                    yield moment
    except CronSimError as exc:
        raise RecurrenceError(f"{expr!r}: {exc}") from exc
    while pending:
        moment = heapq.heappop(pending)
        if moment != last:
            last = moment
            yield moment


def every_times(
    step: timedelta, anchor: datetime, begin: datetime, end: datetime
) -> Iterator[datetime]:
    """Instants ``anchor + k * step`` (k >= 0) in ``[begin, end)``, lazily; the first by
    arithmetic, so an anchor years back costs nothing."""
    if step < MIN_EVERY:
        raise RecurrenceError("every must be at least one second")
    start = max(begin, anchor)
    k = -((anchor - start) // step)  # ceil((start - anchor) / step)
    moment = anchor + k * step
    while moment < end:
        yield moment.astimezone(UTC)
        moment += step


@dataclass(frozen=True)
class Recurrence:
    """When a schedule runs: the union of its cron matches and its interval, within
    ``[start, end]``."""

    cron: tuple[str, ...] = ()
    every: timedelta | None = None
    tz: str = "UTC"
    dst: DstRule = "cron"
    start: datetime | None = None
    end: datetime | None = None
    #: Cron expressions whose matching times (wall clock in ``tz``) are dropped.
    exclude: tuple[str, ...] = ()

    def check(self) -> None:
        """RecurrenceError naming what is wrong, unless this can compute times."""
        if not self.cron and self.every is None:
            raise RecurrenceError("give cron expressions, every, or both")
        for expr in (*self.cron, *self.exclude):
            check_cron(expr)
        if self.every is not None and self.every < MIN_EVERY:
            raise RecurrenceError("every must be at least one second")
        if self.dst not in DST_RULES:
            raise RecurrenceError(f"dst must be one of {', '.join(DST_RULES)}")
        try:
            zone(self.tz)
        except InvalidArgument as exc:
            raise RecurrenceError(f"unknown time zone {self.tz!r}") from exc
        if self.start and self.end and self.end < self.start:
            raise RecurrenceError("end is before start")

    def times(self, begin: datetime, end: datetime, limit: int) -> list[datetime]:
        """Up to ``limit`` nominal times in ``[begin, end)`` and inside ``[start, end]``,
        sorted and without repeats."""
        if self.start is not None:
            begin = max(begin, self.start)
        if self.end is not None:
            end = min(end, self.end + _MICRO)
        if end <= begin or limit <= 0:
            return []
        streams = [cron_times(expr, self.tz, self.dst, begin, end) for expr in self.cron]
        if self.every is not None:
            streams.append(every_times(self.every, self.start or EPOCH, begin, end))
        out: list[datetime] = []
        for moment in heapq.merge(*streams):
            if out and out[-1] == moment:
                continue
            if self.exclude and self.excluded(moment):
                continue
            out.append(moment)
            if len(out) >= limit:
                break
        return out

    def excluded(self, moment: datetime) -> bool:
        """True when an exclusion matches ``moment``'s wall-clock time in ``tz``."""
        local = moment.astimezone(zone(self.tz))
        for expr in self.exclude:
            seconds = len(expr.split()) == 6  # cronsim's form with seconds
            probe = (
                local.replace(microsecond=0) if seconds else local.replace(second=0, microsecond=0)
            )
            try:
                if next(CronSim(expr, probe - _SECOND)) == probe:
                    return True
            except (CronSimError, StopIteration):
                continue
        return False

    def next_times(self, after: datetime, count: int) -> list[datetime]:
        """The next ``count`` nominal times at or after ``after``, looking at most ten years
        ahead."""
        return self.times(after, after + timedelta(days=3660), count)


def jitter_for(key: str, nominal: datetime, jitter: timedelta) -> timedelta:
    """A delay below ``jitter``, the same every time for one (key, nominal time): every
    dispatcher computing a run gives it the same run time."""
    if jitter <= timedelta(0):
        return timedelta(0)
    text = f"{key}\x1f{nominal.timestamp()}".encode()
    digest = int.from_bytes(hashlib.blake2b(text, digest_size=8).digest())
    return timedelta(milliseconds=digest % max(1, jitter // timedelta(milliseconds=1)))
