"""Retention: raw usage records older than BILLING_USAGE_RETENTION_DAYS are deleted once their day
is rolled up and their month invoiced; the rollups stay.
"""

from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing.models import Invoice, UsageRecord, UsageRollupDay
from billing.periods import day_start, month_start

from .errors import BillingError
from .rollups import _raw_count


def usage_retention_apply(*, now: datetime | None = None, batch_size: int = 10_000) -> int:
    """Delete raw usage records older than BILLING_USAGE_RETENTION_DAYS (0: keep them all).

    Only days whose rollup is current and whose month has no draft invoice left lose their raw
    records; the rollups stay, and the day is marked pruned so that it is never rolled up again.
    """
    keep = settings.BILLING_USAGE_RETENTION_DAYS
    if not keep:
        return 0
    minimum = settings.BILLING_ROLLUP_LOOKBACK_DAYS + 31 + settings.BILLING_INVOICE_GRACE_DAYS
    if keep < minimum:
        raise BillingError(f"BILLING_USAGE_RETENTION_DAYS must be at least {minimum} (lookback, a month, grace)")
    now = now or timezone.now()
    cutoff = now.astimezone(UTC).date() - timedelta(days=keep)
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
