"""Strict parsing of the dates users hand us.

Dates reach file paths, Delta predicates and SQL, so they are parsed into real `datetime.date`
objects at the edge and only ever formatted back by `isoformat()`: nothing a user typed is
interpolated as-is.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Sequence

_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class DateError(ValueError):
    """A date or date range that is not acceptable; the message is meant for the user."""


def parse_date(value: str | dt.date, what: str = "date") -> dt.date:
    """Parse a strict ISO `YYYY-MM-DD` date (no times, no other separators, must exist)."""
    if isinstance(value, dt.datetime):
        raise DateError(f"{what}: expected a date, got a datetime {value!r}")
    if isinstance(value, dt.date):
        return value
    text = str(value).strip()
    if not _ISO.match(text):
        raise DateError(f"{what}: {value!r} is not an ISO date (expected YYYY-MM-DD)")
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise DateError(f"{what}: {value!r} is not a real calendar date ({exc})") from None


def parse_range(start: str | dt.date, end: str | dt.date) -> tuple[dt.date, dt.date]:
    d1, d2 = parse_date(start, "start"), parse_date(end, "end")
    if d2 < d1:
        raise DateError(f"end {d2.isoformat()} is before start {d1.isoformat()}")
    return d1, d2


def date_range(start: dt.date, end: dt.date) -> Iterator[dt.date]:
    """Inclusive range of days."""
    day = start
    while day <= end:
        yield day
        day += dt.timedelta(days=1)


def span_label(days: Sequence[dt.date]) -> str:
    """How a run names the sorted dates it handles together (task runs, Data Docs results): the
    date, or `first..last`."""
    return days[0].isoformat() if len(days) == 1 else f"{days[0].isoformat()}..{days[-1].isoformat()}"


def day_start_utc(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def feature_timestamp(as_of: dt.date) -> dt.datetime:
    """Features as of day D become available at D+1 00:00 UTC (contract §5)."""
    return day_start_utc(as_of + dt.timedelta(days=1))
