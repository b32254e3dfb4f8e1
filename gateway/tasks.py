"""Celery tasks of the gateway: keeping its Redis counters true to the database."""

from celery import shared_task
from django.db.models import Q
from django.utils import timezone

from billing.models import Subscription
from billing.services import month_to_date_spend

from .limits import reconcile_sync


@shared_task(acks_late=True)
def reconcile_budget_counters() -> int:
    """Reset every budgeted tenant's month-to-date spend counter from its usage records.

    The counter drifts only through failures (a settlement that could not reach Redis, a hold
    of a crashed process); the database is the truth. Idempotent: run it as often as you like.
    """
    now = timezone.now()
    tenant_ids = (
        Subscription.objects.filter(Q(monthly_budget__isnull=False) | Q(plan__default_monthly_budget__isnull=False))
        .values_list("tenant_id", flat=True)
        .order_by("tenant_id")
    )
    count = 0
    for tenant_id in tenant_ids:
        reconcile_sync(tenant_id, month_to_date_spend(tenant_id=tenant_id, now=now))
        count += 1
    return count
