"""Budget alerts: raised once per tenant, month and threshold when spend crosses it, delivered by
webhook (signed) and e-mail from a Celery task after commit.
"""

import hashlib
import hmac
import json
import logging
import time
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import partial

import httpx2
from django.core.mail import send_mail
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from billing.models import BudgetAlert, Subscription
from billing.periods import month_start, period_str
from billing.selectors import month_to_date_spend, subscription_webhook_secret_get

log = logging.getLogger(__name__)


class WebhookError(Exception):
    """A budget alert webhook failed (network error or non-2xx answer): the task retries it."""


WEBHOOK_TIMEOUT_SECONDS = 5.0


def _budget_alerts_insert(
    *, tenant_id: int, period: date, thresholds: list[int], spend: Decimal, budget: Decimal, now: datetime
) -> list[int]:
    """INSERT … ON CONFLICT DO NOTHING RETURNING id: the ids of the rows this call inserted.

    Concurrent callers race on the unique constraint (tenant, period, threshold); a row already
    there, or inserted by a concurrent transaction that commits first, comes back to nobody else.
    """
    ops, quote = connection.ops, connection.ops.quote_name
    columns = ["tenant_id", "period", "threshold", "spend", "budget", "created_at", "webhook_attempts"]
    field = BudgetAlert._meta.get_field
    params: list = []
    for threshold in thresholds:
        params += [
            tenant_id,
            ops.adapt_datefield_value(period),
            threshold,
            ops.adapt_decimalfield_value(spend, field("spend").max_digits, field("spend").decimal_places),
            ops.adapt_decimalfield_value(budget, field("budget").max_digits, field("budget").decimal_places),
            ops.adapt_datetimefield_value(now),
            0,
        ]
    values = ", ".join(["(" + ", ".join(["%s"] * len(columns)) + ")"] * len(thresholds))
    sql = (
        f"INSERT INTO {quote(BudgetAlert._meta.db_table)} ({', '.join(quote(c) for c in columns)}) "  # noqa: S608 (our own names)
        f"VALUES {values} ON CONFLICT ({quote('tenant_id')}, {quote('period')}, {quote('threshold')}) "
        f"DO NOTHING RETURNING {quote('id')}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [row[0] for row in cursor.fetchall()]


def budget_alerts_check(*, tenant_id: int, now: datetime | None = None) -> list[BudgetAlert]:
    """Raise the tenant's budget alerts crossed this month and not raised yet; return the new ones.

    Cheap enough to call after every metered request: a subscription read, one aggregate, and
    only when a threshold is crossed a read of the month's alerts (and an insert if any is new).
    Each new alert is delivered by `billing.tasks.deliver_budget_alert` once this commits; only
    the caller whose insert created the row queues it, so an alert goes out once per month.
    A budget of zero or none raises nothing.
    """
    from billing.tasks import deliver_budget_alert  # tasks import services

    now = now or timezone.now()
    subscription = Subscription.objects.select_related("plan").filter(tenant_id=tenant_id).first()
    budget = subscription.effective_budget if subscription else None
    if budget is None or budget <= 0:
        return []
    thresholds = sorted({int(t) for t in subscription.alert_thresholds or []})
    if not thresholds:
        return []
    spend = month_to_date_spend(tenant_id=tenant_id, now=now)
    crossed = [t for t in thresholds if spend * 100 >= budget * t]
    if not crossed:
        return []
    period = month_start(now.astimezone(UTC).date())
    raised = set(BudgetAlert.objects.filter(tenant_id=tenant_id, period=period).values_list("threshold", flat=True))
    missing = [t for t in crossed if t not in raised]
    if not missing:
        return []
    with transaction.atomic():
        ids = _budget_alerts_insert(
            tenant_id=tenant_id, period=period, thresholds=missing, spend=spend, budget=budget, now=now
        )
        for alert_id in ids:
            # As `delay_on_commit`, but robust: the caller (the gateway's metering) must not fail
            # because the broker is down or, in eager mode, the webhook is; the alert stays recorded.
            transaction.on_commit(partial(deliver_budget_alert.delay, alert_id), robust=True)
    if not ids:
        return []
    alerts = list(BudgetAlert.objects.filter(id__in=ids).order_by("threshold"))
    for alert in alerts:
        log.info("budget alert: tenant %s at %s%% of %s (spend %s)", tenant_id, alert.threshold, budget, spend)
    return alerts


def budget_alert_payload(*, alert: BudgetAlert, currency: str) -> dict:
    return {
        "id": alert.id,
        "type": "budget.threshold_reached",
        "tenant": alert.tenant.slug,
        "period": period_str(alert.period),
        "threshold_percent": alert.threshold,
        "spend": f"{alert.spend:f}",
        "budget": f"{alert.budget:f}",
        "currency": currency,
        "created_at": alert.created_at.astimezone(UTC).isoformat(),
    }


def webhook_signature(*, secret: str, timestamp: str, body: bytes) -> str:
    """HMAC-SHA256 over "<timestamp>.<raw body>", hex: the `x-signature-256: sha256=<hex>` header.

    The timestamp (`x-webhook-timestamp`, Unix seconds) is signed too, so that a receiver can
    refuse old deliveries replayed; `x-alert-id` (also `id` in the body) is the idempotency key.
    """
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def _alert_email_recipients(subscription: Subscription) -> list[str]:
    return [address.strip() for address in subscription.alert_emails.split(",") if address.strip()]


def budget_alert_deliver(*, alert_id: int, now: datetime | None = None) -> dict:
    """Send a budget alert by email (once) and to the tenant's webhook (until it answers 2xx).

    The email is sent under the alert's row lock and recorded in the same transaction, so a
    retry for the webhook does not send it again (a crash between the send and the commit
    could; tolerated). The webhook raises `WebhookError` to be retried; receivers deduplicate
    on the alert id.
    """
    try:
        alert = BudgetAlert.objects.select_related("tenant__subscription__plan").get(pk=alert_id)
    except BudgetAlert.DoesNotExist:
        return {"alert": alert_id, "missing": True}
    subscription = alert.tenant.subscription
    currency = subscription.plan.currency
    recipients = _alert_email_recipients(subscription)
    result = {"alert": alert_id, "email": False, "webhook": False}

    if recipients and alert.email_sent_at is None:
        with transaction.atomic():
            locked = BudgetAlert.objects.select_for_update().get(pk=alert_id)
            if locked.email_sent_at is None:
                send_mail(
                    subject=f"Budget alert: {alert.tenant.slug} reached {alert.threshold}% of its monthly budget",
                    message=(
                        f"Tenant {alert.tenant.name} ({alert.tenant.slug}) has spent {alert.spend:.2f} {currency} "
                        f"in {period_str(alert.period)}, {alert.threshold}% or more of its monthly budget of "
                        f"{alert.budget:.2f} {currency}.\n"
                    ),
                    from_email=None,
                    recipient_list=recipients,
                )
                locked.email_sent_at = now or timezone.now()
                locked.save(update_fields=["email_sent_at"])
                result["email"] = True

    url = subscription.alert_webhook_url
    if url and alert.webhook_delivered_at is None:
        attempted = BudgetAlert.objects.filter(pk=alert_id, webhook_delivered_at__isnull=True).update(
            webhook_attempts=F("webhook_attempts") + 1
        )
        if not attempted:
            return result  # delivered meanwhile by a concurrent run
        body = json.dumps(budget_alert_payload(alert=alert, currency=currency), separators=(",", ":")).encode()
        timestamp = str(int(time.time()))
        headers = {
            "content-type": "application/json",
            "user-agent": "proxy-platform-budget-alerts/1",
            "x-alert-id": str(alert.id),
            "x-webhook-timestamp": timestamp,
        }
        secret = subscription_webhook_secret_get(subscription=subscription)
        if secret:
            headers["x-signature-256"] = "sha256=" + webhook_signature(secret=secret, timestamp=timestamp, body=body)
        try:
            response = httpx2.post(url, content=body, headers=headers, timeout=WEBHOOK_TIMEOUT_SECONDS)
        except httpx2.HTTPError as exc:
            raise WebhookError(f"budget alert {alert_id}: webhook unreachable ({type(exc).__name__})") from exc
        if not 200 <= response.status_code < 300:
            raise WebhookError(f"budget alert {alert_id}: webhook answered {response.status_code}")
        BudgetAlert.objects.filter(pk=alert_id).update(webhook_delivered_at=now or timezone.now())
        result["webhook"] = True
    return result
