"""Celery tasks of the gateway: keeping its Redis counters true to the database, and every served
request billed (the journal's reconciler)."""

from celery import shared_task
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from billing.models import Subscription
from billing.selectors import month_to_date_spend, month_to_date_spend_by_key, spend_since_by
from tenants.models import ApiKey, Project

from .journal import reconcile_requests_sync
from .limits import reconcile_key_sync, reconcile_level_sync, reconcile_sync


@shared_task(acks_late=True)
def reconcile_budget_counters() -> int:
    """Reset the month-to-date spend counter of every budgeted tenant, of every usable key with a
    budget of its own and of every project with one, and the day's counter of every usable key
    with a daily budget, from their usage records; returns how many counters were reset.

    The counter drifts only through failures (a settlement that could not reach Redis, a hold
    of a crashed process); the database is the truth. Idempotent: run it as often as you like.
    """
    now = timezone.now()
    month = now.strftime("%Y-%m")  # the month summed is the month reset, even across midnight of the 1st
    tenant_ids = (
        Subscription.objects.filter(Q(monthly_budget__isnull=False) | Q(plan__default_monthly_budget__isnull=False))
        .values_list("tenant_id", flat=True)
        .order_by("tenant_id")
    )
    count = 0
    for tenant_id in tenant_ids:
        reconcile_sync(tenant_id, month_to_date_spend(tenant_id=tenant_id, now=now), month=month)
        count += 1
    # Revoked and expired keys admit nothing more: their counters are left to expire.
    keys_by_tenant: dict[int, list[int]] = {}
    for tenant_id, key_id in (
        ApiKey.objects.filter(monthly_budget__isnull=False, revoked_at__isnull=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .values_list("tenant_id", "id")
        .order_by("tenant_id", "id")
    ):
        keys_by_tenant.setdefault(tenant_id, []).append(key_id)
    for tenant_id, key_ids in keys_by_tenant.items():
        # One aggregate per tenant, summed just before its keys' counters are reset (see reconcile()).
        for key_id, total in month_to_date_spend_by_key(tenant_id=tenant_id, key_ids=key_ids, now=now).items():
            reconcile_key_sync(tenant_id, key_id, total, month=month)
            count += 1
    return count + _reconcile_projects_and_key_days(now)


def _reconcile_projects_and_key_days(now) -> int:
    """The monthly counters of projects with a budget and the daily counters of usable keys with
    one, as above (end users' counters, unbounded in number, are rebuilt from the records when
    they expire or go missing)."""
    month, day = now.strftime("%Y-%m"), now.strftime("%Y-%m-%d")
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    count = 0
    by_tenant: dict[int, list[int]] = {}
    for tenant_id, project_id in (
        Project.objects.filter(monthly_budget__isnull=False).values_list("tenant_id", "id").order_by("tenant_id", "id")
    ):
        by_tenant.setdefault(tenant_id, []).append(project_id)
    for tenant_id, ids in by_tenant.items():
        totals = spend_since_by(tenant_id=tenant_id, field="project_id", ids=ids, since=month_start)
        for project_id, total in totals.items():
            reconcile_level_sync(tenant_id, "project", project_id, total, period=month)
            count += 1
    by_tenant = {}
    for tenant_id, key_id in (
        ApiKey.objects.filter(daily_budget__isnull=False, revoked_at__isnull=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .values_list("tenant_id", "id")
        .order_by("tenant_id", "id")
    ):
        by_tenant.setdefault(tenant_id, []).append(key_id)
    for tenant_id, ids in by_tenant.items():
        for key_id, total in spend_since_by(tenant_id=tenant_id, field="api_key_id", ids=ids, since=day_start).items():
            reconcile_level_sync(tenant_id, "key", key_id, total, period=day)
            count += 1
    return count


@shared_task(acks_late=True)
def reconcile_requests() -> dict:
    """Write the journal's spooled usage records and record the requests of dead processes as
    `interrupted` (gateway/journal.py). Idempotent and safe beside another run: entries are claimed."""
    result = reconcile_requests_sync(older_than_seconds=settings.GATEWAY_RECONCILE_AFTER_SECONDS)
    return {"replayed": result.replayed, "interrupted": result.interrupted, "released": result.released}
