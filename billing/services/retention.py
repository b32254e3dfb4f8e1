"""Retention: raw usage records older than BILLING_USAGE_RETENTION_DAYS go once rolled up and
invoiced; the rollups stay.

On PostgreSQL, where usage records are partitioned by month (billing/services/partitions.py), a
whole month goes at once: its partition is dropped (no row-by-row delete, no bloat, no vacuum)
once every day of it with records is rolled up and current, and every invoice of the month is
finalized, each tenant with records having one. Elsewhere (the SQLite demo) the records of each
such day are deleted.
"""

import logging
from datetime import UTC, date, datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count
from django.db.models.functions import TruncDate
from django.utils import timezone

from billing.models import Invoice, UsageRecord, UsageRollupDay
from billing.periods import day_start, month_start, next_month, period_bounds

from .errors import BillingError
from .partitions import (
    usage_default_partition_months,
    usage_partition_drop,
    usage_partition_ensure,
    usage_partition_lock,
    usage_partition_months,
    usage_partitioned,
)
from .rollups import _raw_count

log = logging.getLogger(__name__)


def usage_retention_apply(*, now: datetime | None = None, batch_size: int = 10_000) -> int:
    """Delete raw usage records older than BILLING_USAGE_RETENTION_DAYS (0: keep them all).

    Only days whose rollup is current and whose month has no draft invoice left lose their raw
    records; the rollups stay, and the day is marked pruned so that it is never rolled up again.
    On a partitioned table (PostgreSQL) whole months go, their partitions dropped
    (`_drop_partitions`); `batch_size` is for the row-by-row deletion elsewhere. Returns the
    number of records removed.
    """
    keep = settings.BILLING_USAGE_RETENTION_DAYS
    if not keep:
        return 0
    minimum = settings.BILLING_ROLLUP_LOOKBACK_DAYS + 31 + settings.BILLING_INVOICE_GRACE_DAYS
    if keep < minimum:
        raise BillingError(f"BILLING_USAGE_RETENTION_DAYS must be at least {minimum} (lookback, a month, grace)")
    now = now or timezone.now()
    cutoff = now.astimezone(UTC).date() - timedelta(days=keep)
    if usage_partitioned():
        return _drop_partitions(cutoff)
    deleted = 0
    open_months = set(
        Invoice.objects.filter(status=Invoice.Status.DRAFT, period__lte=cutoff).values_list("period", flat=True)
    )
    for marker in UsageRollupDay.objects.filter(day__lt=cutoff, pruned=False).order_by("day"):
        if month_start(marker.day) in open_months:
            continue
        with transaction.atomic():
            marker = UsageRollupDay.objects.select_for_update().get(pk=marker.pk)
            if marker.pruned or marker.records != _raw_count(marker.day):
                continue  # not current: the next rollup first
            start = day_start(marker.day)
            records = UsageRecord.objects.filter(created_at__gte=start, created_at__lt=start + timedelta(days=1))
            while True:
                ids = list(records.values_list("id", flat=True)[:batch_size])
                if not ids:
                    break
                deleted += UsageRecord.objects.filter(id__in=ids)._raw_delete(using="default")
            marker.pruned = True
            marker.save(update_fields=["pruned"])
    return deleted


def _month_blocker(month: date) -> str | None:
    """Why a month's records cannot go yet (None: they can): an invoice of the month not
    finalized, a tenant with records and no invoice, or a day with records whose rollup is
    missing or not current (a pruned day must hold no records)."""
    if Invoice.objects.filter(period=month, status=Invoice.Status.DRAFT).exists():
        return "draft invoices"
    start, end = period_bounds(month)
    records = UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end)
    invoiced = Invoice.objects.filter(period=month, kind=Invoice.Kind.INVOICE).values("tenant_id")
    if records.exclude(tenant_id__in=invoiced).exists():
        return "tenants with usage and no invoice"
    counts = dict(
        records.annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values("day")
        .annotate(n=Count("id"))
        .order_by()
        .values_list("day", "n")
    )
    markers = {marker.day: marker for marker in UsageRollupDay.objects.filter(day__gte=month, day__lt=end.date())}
    for day, n in sorted(counts.items()):
        marker = markers.get(day)
        if marker is None or marker.rolled_up_at is None or marker.pruned or marker.records != n:
            return f"{day} not rolled up (or not current)"
    return None


def _drop_partitions(cutoff: date) -> int:
    """Drop the partition of every month wholly before `cutoff` that may go (`_month_blocker`):
    the number of records dropped. A month whose records sit in the default partition gets its
    own partition first (`usage_partition_ensure` moves them), then goes the same way.

    The checks run with the month's rollup markers locked (a rollup of its days waits) and its
    partition in SHARE mode (a late record of the month waits; this month's inserts go to another
    partition and do not); dropping takes the table's ACCESS EXCLUSIVE lock for an instant.
    """
    months = sorted(
        month
        for month in {*usage_partition_months(), *usage_default_partition_months(before=cutoff)}
        if next_month(month) <= cutoff
    )
    dropped = 0
    for month in months:
        usage_partition_ensure(month=month)
        start, end = period_bounds(month)
        with transaction.atomic():
            list(UsageRollupDay.objects.select_for_update().filter(day__gte=month, day__lt=end.date()))
            usage_partition_lock(month=month)
            blocker = _month_blocker(month)
            if blocker is not None:
                log.info("usage of %s kept: %s", f"{month:%Y-%m}", blocker)
                continue
            records = UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end).count()
            usage_partition_drop(month=month)
            # The month's days are marked pruned, so that no rollup is ever redone from nothing.
            UsageRollupDay.objects.filter(day__gte=month, day__lt=end.date()).update(pruned=True)
        log.info("usage partition of %s dropped: %d records", f"{month:%Y-%m}", records)
        dropped += records
    return dropped
