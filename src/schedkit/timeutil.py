"""Turning what people type into instants: explicit zones, and DST gaps and overlaps refused.

A naive local time is read in an explicit zone. One that does not exist (clocks jump forward)
or exists twice (clocks fall back) is an error unless the caller picks a policy:
``shift`` (gaps move forward by the jump, overlaps take the first), ``earliest`` or ``latest``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from schedkit.errors import InvalidArgument

DstPolicy = Literal["raise", "shift", "earliest", "latest"]
DST_POLICIES: tuple[str, ...] = ("raise", "shift", "earliest", "latest")
#: What a timetable does with a run time already past: skip it, run it now, or refuse.
PastPolicy = Literal["skip", "run", "error"]
PAST_POLICIES: tuple[str, ...] = ("skip", "run", "error")


def zone(name: str | tzinfo | None, field: str = "tz") -> tzinfo:
    """A tzinfo from an IANA name ('Europe/Paris', 'UTC'), or InvalidArgument naming ``field``."""
    if name is None or name == "":
        return UTC
    if isinstance(name, tzinfo):
        return name
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidArgument.for_field(field, f"unknown time zone {name!r}") from exc


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
