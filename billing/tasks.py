"""Celery tasks: thin wrappers around the services, called with plain strings, never objects.

Every task here is idempotent and safe to run twice at once (the services lock rows and
upsert), so messages are acknowledged late (settings: CELERY_TASK_ACKS_LATE) and a worker
killed mid-task hands its message back. Database hiccups are retried with backoff; a
`BillingError` (an expected refusal) is logged and not retried.
"""

import logging
from datetime import date

from celery import shared_task
from django.db import DatabaseError, InterfaceError, OperationalError
from django.db.models import Q
from django.utils import timezone

from .models import Subscription
from .periods import period_parse, period_str
from .selectors import budget_statuses, invoice_periods_due
from .services import (
    BillingError,
    WebhookError,
    budget_alert_deliver,
    budget_alerts_check,
    invoices_generate,
    usage_partitions_ensure,
    usage_retention_apply,
    usage_rollup,
)

log = logging.getLogger(__name__)

RETRY = {
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": 5,
    "retry_backoff_max": 300,
    "retry_jitter": True,
    "max_retries": 8,
}


@shared_task(**RETRY)
def rollup_usage(since: str | None = None, until: str | None = None) -> dict:
    result = usage_rollup(
        since=date.fromisoformat(since) if since else None, until=date.fromisoformat(until) if until else None
    )
    return {"days": [day.isoformat() for day in result.days], "records": result.records}


@shared_task(**RETRY)
def generate_invoices(period: str, finalize: bool = False, close: bool = False) -> dict:
    try:
        result = invoices_generate(period=period_parse(period), finalize=finalize, close=close)
    except BillingError as exc:
        log.error("invoices of %s not generated: %s", period, exc)
        return {"period": period, "error": str(exc)}
    return {
        "period": period,
        "created": result.created,
        "updated": result.updated,
        "unchanged": result.unchanged,
        "finalized": result.finalized,
        "kept": result.kept,
    }


@shared_task(**RETRY)
def close_invoice_periods() -> list[str]:
    """Daily: each month due (see `invoice_periods_due`) gets its own generation task."""
    queued = []
    for due in invoice_periods_due(now=timezone.now()):
        generate_invoices.delay_on_commit(period=period_str(due.period), finalize=due.finalize, close=due.finalize)
        queued.append(period_str(due.period) + (" (finalize)" if due.finalize else ""))
    return queued


@shared_task(**RETRY)
def check_budgets() -> list[dict]:
    """Raise the budget alerts due (`budget_alerts_check`, per tenant with a budget), and log the
    tenants at or above 80 % of their monthly budget."""
    now = timezone.now()
    with_budget = Subscription.objects.filter(
        Q(monthly_budget__isnull=False) | Q(plan__default_monthly_budget__isnull=False)
    ).order_by("tenant_id")
    for tenant_id in with_budget.values_list("tenant_id", flat=True):
        budget_alerts_check(tenant_id=tenant_id, now=now)
    flagged = []
    for status in budget_statuses(now=now):
        if status.ratio >= 1:
            log.warning("tenant %s over budget: %s of %s", status.tenant, status.spend, status.budget)
        elif status.ratio >= 0.8:
            log.info("tenant %s at %.0f%% of budget", status.tenant, status.ratio * 100)
        else:
            continue
        flagged.append({"tenant": status.tenant, "spend": str(status.spend), "budget": str(status.budget)})
    return flagged


# Backoff 30 s, 60 s, 2 min, … capped at an hour (with jitter): six retries span about half an hour.
@shared_task(
    autoretry_for=(WebhookError, OperationalError, InterfaceError),
    retry_backoff=30,
    retry_backoff_max=3600,
    retry_jitter=True,
    max_retries=6,
)
def deliver_budget_alert(alert_id: int) -> dict:
    """Email (once) and webhook (until delivered) for one budget alert; see `budget_alert_deliver`."""
    return budget_alert_deliver(alert_id=alert_id)


@shared_task(autoretry_for=(DatabaseError,), retry_backoff=60, max_retries=3)
def apply_usage_retention() -> int:
    try:
        return usage_retention_apply()
    except BillingError as exc:
        log.error("usage retention not applied: %s", exc)
        return 0


@shared_task(**RETRY)
def ensure_usage_partitions() -> list[str]:
    """Daily: this month's usage partition and the next ones (PostgreSQL; elsewhere nothing).
    A lock not obtained within the services' lock timeout is an OperationalError: retried."""
    return usage_partitions_ensure()
