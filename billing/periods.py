"""Billing months and UTC days. Pure: no ORM, no settings.

A period is a calendar month in UTC, named by its first day. It is open until its last day
ends, then in grace for `grace_days` (late usage records may still come in and drafts are
still regenerated), then closed: the automatic run finalizes its invoices.
"""

import enum
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, time, timedelta

_PERIOD = re.compile(r"^(\d{4})-(\d{2})$")


class PeriodState(enum.StrEnum):
    FUTURE = "future"
    OPEN = "open"
    GRACE = "grace"
    CLOSED = "closed"


def period_parse(value: str) -> date:
    """ "2024-05" -> date(2024, 5, 1); anything else is a ValueError."""
    match = _PERIOD.match(value.strip())
    if not match:
        raise ValueError(f"a period is YYYY-MM, not {value!r}")
    year, month = int(match[1]), int(match[2])
    if not 1 <= month <= 12 or year < 2000:
        raise ValueError(f"no such month: {value!r}")
    return date(year, month, 1)


def period_str(period: date) -> str:
    return f"{period:%Y-%m}"


def month_start(day: date) -> date:
    return day.replace(day=1)


def next_month(period: date) -> date:
    return date(period.year + period.month // 12, period.month % 12 + 1, 1)


def previous_month(period: date) -> date:
    return date(period.year - 1, 12, 1) if period.month == 1 else date(period.year, period.month - 1, 1)


def month_end(period: date) -> date:
    """The last day of the month."""
    return next_month(period) - timedelta(days=1)


def day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def period_bounds(period: date) -> tuple[datetime, datetime]:
    """[start, end) of the month as aware UTC datetimes."""
    return day_start(period), day_start(next_month(period))


def period_state(period: date, *, now: datetime, grace_days: int) -> PeriodState:
    start, end = period_bounds(period)
    if now < start:
        return PeriodState.FUTURE
    if now < end:
        return PeriodState.OPEN
    if now < end + timedelta(days=grace_days):
        return PeriodState.GRACE
    return PeriodState.CLOSED


def days(start: date, end: date) -> Iterator[date]:
    """Every day from start to end, both included."""
    day = start
    while day <= end:
        yield day
        day += timedelta(days=1)


def day_runs(values: Iterable[date]) -> list[tuple[date, date]]:
    """Consecutive days grouped into (first, last) runs: few ranges instead of many days."""
    runs: list[tuple[date, date]] = []
    for day in sorted(set(values)):
        if runs and runs[-1][1] + timedelta(days=1) == day:
            runs[-1] = (runs[-1][0], day)
        else:
            runs.append((day, day))
    return runs
