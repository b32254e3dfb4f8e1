"""Daily rollups: raw usage records summed per day into `UsageRollup`, idempotently.

One `INSERT … ON CONFLICT` upsert per day; a day is rolled up again only when its raw records
changed (`UsageRollupDay.records`), so the nightly task and the invoice run can both call it.
"""

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Sum
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from billing import latency
from billing.aggregates import money_sum_sql
from billing.models import UsageRecord, UsageRollup, UsageRollupDay
from billing.periods import day_start

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RollupResult:
    days: list[date]
    records: int


_ROLLUP_KEY = [
    "tenant_id",
    "project_id",
    "model",
    "endpoint",
    "status_code",
    "error_type",
    "cache_hit",
    "price_id",
    "price_tier_id",
]


_ROLLUP_SUMS = [
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "cost",
    "latency_ms",
]


def _rollup_insert_sql() -> str:
    quote = connection.ops.quote_name
    key = ", ".join(quote(c) for c in _ROLLUP_KEY)
    columns = [
        "day",
        *_ROLLUP_KEY,
        "requests",
        "streamed",
        "estimated",
        *_ROLLUP_SUMS,
    ]
    sums = ", ".join(money_sum_sql(quote(c)) if c == "cost" else f"SUM({quote(c)})" for c in _ROLLUP_SUMS)
    histogram = latency.bucket_sql(quote("latency_ms"))
    columns += [name for name, _ in histogram]
    buckets = ", ".join(expression for _, expression in histogram)
    return (
        f"INSERT INTO {quote(UsageRollup._meta.db_table)} ({', '.join(quote(c) for c in columns)}) "  # noqa: S608
        f"SELECT %s, {key}, COUNT(*), "
        f"SUM(CASE WHEN {quote('streamed')} THEN 1 ELSE 0 END), "
        f"SUM(CASE WHEN {quote('estimated')} THEN 1 ELSE 0 END), {sums}, {buckets} "
        f"FROM {quote(UsageRecord._meta.db_table)} "
        f"WHERE {quote('created_at')} >= %s AND {quote('created_at')} < %s "
        f"GROUP BY {key}"
    )


def _raw_count(day: date) -> int:
    start = day_start(day)
    return UsageRecord.objects.filter(created_at__gte=start, created_at__lt=start + timedelta(days=1)).count()


def usage_rollup_day(*, day: date, now: datetime | None = None) -> int:
    """Roll up one UTC day whole: delete its rollups and aggregate its records again, in SQL.

    The day's `UsageRollupDay` row is locked for the transaction, so two runs of the same day
    take turns; the second finds the day current and leaves it. Returns the records rolled up.
    """
    now = now or timezone.now()
    with transaction.atomic():
        UsageRollupDay.objects.get_or_create(day=day)
        marker = UsageRollupDay.objects.select_for_update().get(day=day)
        if marker.pruned:
            return marker.records  # its raw records are gone: the rollup is all there is
        if marker.rolled_up_at is not None and marker.records == _raw_count(day):
            return marker.records
        UsageRollup.objects.filter(day=day).delete()
        field = UsageRecord._meta.get_field("created_at")
        start = day_start(day)
        params = [
            UsageRollup._meta.get_field("day").get_db_prep_value(day, connection),
            field.get_db_prep_value(start, connection),
            field.get_db_prep_value(start + timedelta(days=1), connection),
        ]
        with connection.cursor() as cursor:
            cursor.execute(_rollup_insert_sql(), params)
        # Counted from the rows just written, not from the raw table again: a record committed
        # in between would otherwise be counted without being rolled up, and never picked up.
        marker.records = UsageRollup.objects.filter(day=day).aggregate(n=Coalesce(Sum("requests"), 0))["n"]
        marker.rolled_up_at = now
        marker.save(update_fields=["records", "rolled_up_at"])
    return marker.records


def usage_rollup(*, since: date | None = None, until: date | None = None, now: datetime | None = None) -> RollupResult:
    """Roll up every closed UTC day in [since, until] whose raw records changed since its rollup.

    Without `since`, the last BILLING_ROLLUP_LOOKBACK_DAYS days: a late record (a request
    recorded after its day was rolled up) changes its day's count, and the next run does that
    day again. Today is never rolled up: reports read it raw.
    """
    now = now or timezone.now()
    today = now.astimezone(UTC).date()
    first = since or today - timedelta(days=settings.BILLING_ROLLUP_LOOKBACK_DAYS)
    last = min(until or today, today - timedelta(days=1))
    if first > last:
        return RollupResult(days=[], records=0)
    counts = dict(
        UsageRecord.objects.filter(created_at__gte=day_start(first), created_at__lt=day_start(last + timedelta(days=1)))
        .annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values("day")
        .annotate(n=Count("id"))
        .order_by()
        .values_list("day", "n")
    )
    markers = {
        m.day: m for m in UsageRollupDay.objects.filter(day__gte=first, day__lte=last).only("day", "records", "pruned")
    }
    dirty = sorted(
        day
        for day in set(counts) | set(markers)
        if day not in markers or (not markers[day].pruned and markers[day].records != counts.get(day, 0))
    )
    records = 0
    for day in dirty:
        records += usage_rollup_day(day=day, now=now)
    if dirty:
        log.info("rolled up %d days (%d records)", len(dirty), records)
    return RollupResult(days=dirty, records=records)
