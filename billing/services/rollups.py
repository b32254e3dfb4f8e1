"""Daily rollups: raw usage records summed per day into `UsageRollup`, idempotently.

One `INSERT … SELECT` per day; a day is rolled up again only when its raw records changed
(`UsageRollupDay.records`), so the nightly task and the invoice run can both call it.

With the rollups of a day, in the same transaction, its summaries: the same rows summed coarser,
per tenant and project (`UsageTenantDay`) and per model, endpoint, outcome and price
(`UsageModelDay`), which the platform-wide reports read instead of every rollup row. They are
built from the day's rollups, never from its raw records, so a pruned day (raw records gone,
rollups kept) keeps or regains them too.
"""

import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, Sum
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from billing import latency
from billing.aggregates import money_sum_sql
from billing.models import UsageModelDay, UsageRecord, UsageRollup, UsageRollupDay, UsageTenantDay
from billing.periods import day_start

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RollupResult:
    days: list[date]
    records: int
    summarized: list[date] = field(default_factory=list)  # days rolled up before, whose summaries were built


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


# --- summaries: a day's rollup rows summed coarser (billing.models.UsageTenantDay, UsageModelDay)

_TENANT_DAY_KEY = ["tenant_id", "project_id"]
_MODEL_DAY_KEY = ["model", "endpoint", "status_code", "error_type", "cache_hit", "price_id"]
_MODEL_DAY_SUMS = [
    "requests",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "cost",
    *latency.FIELDS,
]


def _summary_insert_sqls() -> list[str]:
    """One INSERT … SELECT per summary table, from the rollup rows of one day (the parameter)."""
    quote = connection.ops.quote_name
    rollup = quote(UsageRollup._meta.db_table)
    day = quote("day")
    requests = quote("requests")
    # An error as everywhere else (console/analytics.py `_ERROR`, the raw records' count).
    error = f"{quote('status_code')} >= 400 OR {quote('error_type')} <> ''"

    def total(column: str) -> str:
        return money_sum_sql(quote(column)) if column == "cost" else f"SUM({quote(column)})"

    def insert(table: str, key: list[str], columns: list[str], sums: list[str]) -> str:
        names = ", ".join(quote(c) for c in [*key, *columns])
        keys = ", ".join(quote(c) for c in key)
        return (
            f"INSERT INTO {quote(table)} ({day}, {names}) "  # noqa: S608 (our own names)
            f"SELECT {day}, {keys}, {', '.join(sums)} FROM {rollup} WHERE {day} = %s GROUP BY {day}, {keys}"
        )

    tenant_columns = ["requests", "errors", "cache_hits", "input_tokens", "output_tokens", "cost"]
    tenant_sums = [
        total("requests"),
        f"SUM(CASE WHEN {error} THEN {requests} ELSE 0 END)",
        f"SUM(CASE WHEN {quote('cache_hit')} THEN {requests} ELSE 0 END)",
        total("input_tokens"),
        total("output_tokens"),
        total("cost"),
    ]
    return [
        insert(UsageTenantDay._meta.db_table, _TENANT_DAY_KEY, tenant_columns, tenant_sums),
        insert(UsageModelDay._meta.db_table, _MODEL_DAY_KEY, _MODEL_DAY_SUMS, [total(c) for c in _MODEL_DAY_SUMS]),
    ]


def _summaries_write(marker: UsageRollupDay) -> None:
    """Build the day's summaries again from its rollups; the caller holds the marker's lock and
    saves `summarized_at`."""
    UsageTenantDay.objects.filter(day=marker.day).delete()
    UsageModelDay.objects.filter(day=marker.day).delete()
    day = UsageRollup._meta.get_field("day").get_db_prep_value(marker.day, connection)
    with connection.cursor() as cursor:
        for sql in _summary_insert_sqls():
            cursor.execute(sql, [day])
    marker.summarized_at = marker.rolled_up_at


def _summaries_current(marker: UsageRollupDay) -> bool:
    return marker.rolled_up_at is None or marker.summarized_at == marker.rolled_up_at


def usage_summarize_day(*, day: date) -> bool:
    """Build a rolled-up day's summaries from its rollups unless they are current (the day
    rolled up by code before summaries existed, or by a worker still running it during an
    upgrade). The rollups are left as they are, even outside the lookback. Returns whether it
    built them."""
    with transaction.atomic():
        marker = UsageRollupDay.objects.select_for_update().filter(day=day).first()
        if marker is None or _summaries_current(marker):
            return False
        _summaries_write(marker)
        marker.save(update_fields=["summarized_at"])
    return True


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
        # A pruned day's raw records are gone: the rollup is all there is.
        if marker.pruned or (marker.rolled_up_at is not None and marker.records == _raw_count(day)):
            if not _summaries_current(marker):
                _summaries_write(marker)
                marker.save(update_fields=["summarized_at"])
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
        _summaries_write(marker)
        marker.save(update_fields=["records", "rolled_up_at", "summarized_at"])
    return marker.records


def usage_rollup(*, since: date | None = None, until: date | None = None, now: datetime | None = None) -> RollupResult:
    """Roll up every closed UTC day in [since, until] whose raw records changed since its rollup.

    Without `since`, the last BILLING_ROLLUP_LOOKBACK_DAYS days: a late record (a request
    recorded after its day was rolled up) changes its day's count, and the next run does that
    day again. Today is never rolled up: reports read it raw. Then the summaries of any day up
    to `until` rolled up without them (`usage_summarize_day`), whatever `since`.
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
    # Every rolled-up day whose summaries are not current, not only the lookback's: after an
    # upgrade, the first run builds them for the whole history (from the rollups, one day per
    # transaction); after that, none (one small query).
    stale = (
        UsageRollupDay.objects.filter(day__lte=last, rolled_up_at__isnull=False)
        .exclude(summarized_at=F("rolled_up_at"))
        .exclude(day__in=dirty)
        .order_by("day")
        .values_list("day", flat=True)
    )
    summarized = [day for day in stale if usage_summarize_day(day=day)]
    if summarized:
        log.info("summarized %d days rolled up before (%s to %s)", len(summarized), summarized[0], summarized[-1])
    return RollupResult(days=dirty, records=records, summarized=summarized)
