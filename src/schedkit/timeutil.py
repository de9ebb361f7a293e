"""Turning what people type into instants: explicit zones, and DST gaps and overlaps refused.

A naive local time is read in an explicit zone. One that does not exist (clocks jump forward)
or exists twice (clocks fall back) is an error unless the caller picks a policy:
``shift`` (gaps move forward by the jump, overlaps take the first), ``earliest`` or ``latest``.
"""

from __future__ import annotations

import difflib
from datetime import UTC, datetime, timedelta, tzinfo
from functools import cache
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from schedkit.errors import InvalidArgument

DstPolicy = Literal["raise", "shift", "earliest", "latest"]
DST_POLICIES: tuple[str, ...] = ("raise", "shift", "earliest", "latest")
#: What a timetable does with a run time already past: skip it, run it now, or refuse.
PastPolicy = Literal["skip", "run", "error"]
PAST_POLICIES: tuple[str, ...] = ("skip", "run", "error")


@cache
def _zone_names() -> tuple[str, ...]:
    return tuple(sorted(available_timezones()))


def close_zones(name: str, limit: int = 3) -> list[str]:
    """IANA zones close to ``name``: 'Paris' and 'europe/paris' give Europe/Paris."""
    wanted = name.strip().replace(" ", "_").lower()
    names = _zone_names()
    exact = [n for n in names if n.lower() == wanted or n.rsplit("/", 1)[-1].lower() == wanted]
    if exact:
        return exact[:limit]
    by_lower = {n.lower(): n for n in names}
    by_city = {n.rsplit("/", 1)[-1].lower(): n for n in names}
    found = difflib.get_close_matches(wanted, list(by_lower), n=limit, cutoff=0.7)
    found += difflib.get_close_matches(wanted, list(by_city), n=limit, cutoff=0.7)
    matches = [by_lower.get(f) or by_city[f] for f in found]
    return list(dict.fromkeys(matches))[:limit]


def unknown_zone_message(name: str) -> str:
    """Why ``name`` is refused as a zone, with the close matches if there are any."""
    near = close_zones(name)
    hint = f"did you mean {' or '.join(near)}?" if near else "use an IANA name like Europe/Paris"
    return f"unknown time zone {name!r}; {hint}"


def zone(name: str | tzinfo | None, field: str = "tz") -> tzinfo:
    """A tzinfo from an IANA name ('Europe/Paris', 'UTC'), or InvalidArgument naming ``field``.

    None or '' is UTC: callers that must not guess a zone check for it before (see
    :class:`schedkit.timetable.options.TimetableOptions`).
    """
    if name is None or name == "":
        return UTC
    if isinstance(name, tzinfo):
        return name
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidArgument.for_field(field, unknown_zone_message(name)) from exc


def localize(
    naive: datetime, tz: tzinfo, *, dst: DstPolicy = "raise", field: str = "run_at"
) -> datetime:
    """Attach ``tz`` to a naive wall-clock time, refusing DST gaps and overlaps by default."""
    early = naive.replace(tzinfo=tz, fold=0)
    late = naive.replace(tzinfo=tz, fold=1)
    if early.utcoffset() == late.utcoffset():
        return early
    # zoneinfo: in a gap fold=0 uses the offset before the jump, in an overlap the first one.
    round_trip = early.astimezone(UTC).astimezone(tz).replace(tzinfo=None)
    in_gap = round_trip != naive
    if dst == "raise":
        what = "does not exist" if in_gap else "happens twice"
        raise InvalidArgument.for_field(
            field,
            f"{naive.isoformat()} {what} in {tz} (daylight saving change); "
            "choose a DST policy: shift, earliest or latest",
        )
    if in_gap:
        if dst == "shift":
            return early.astimezone(UTC).astimezone(tz)
        instants = sorted([early.astimezone(UTC), late.astimezone(UTC)])
        return instants[0] if dst == "earliest" else instants[1]
    return early if dst in ("shift", "earliest") else late


def to_instant(
    value: datetime | str | timedelta,
    *,
    tz: str | tzinfo | None = None,
    dst: DstPolicy = "raise",
    field: str = "run_at",
    now: datetime | None = None,
) -> datetime:
    """A tz-aware UTC instant from an aware datetime, a naive one in ``tz``, an ISO string,
    or a timedelta from now."""
    if isinstance(value, timedelta):
        return (now or datetime.now(UTC)) + value
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError as exc:
            raise InvalidArgument.for_field(
                field, f"{value!r} is not an ISO 8601 time such as 2026-01-20T08:00:00+01:00"
            ) from exc
    if not isinstance(value, datetime):
        raise InvalidArgument.for_field(field, f"expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        if tz is None:
            raise InvalidArgument.for_field(
                field,
                f"{value.isoformat()} has no time zone; pass tz='Europe/Paris' (or 'UTC') "
                "or an aware datetime",
            )
        value = localize(value, zone(tz), dst=dst, field=field)
    return value.astimezone(UTC)
