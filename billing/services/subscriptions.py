"""Subscriptions: a tenant's plan, and the alert webhook's secret (stored encrypted, never shown)."""

from django.db import transaction

from billing.models import Plan, Subscription
from tenants import audit
from tenants.crypto import encrypt


@transaction.atomic
def subscriptions_set_plan(*, tenants: list, plan: Plan) -> int:
    """Put every given tenant on `plan`, all or nothing; tenants without a subscription get one.

    Invoices already finalized keep the plan they were issued under (they snapshot its terms).
    """
    ids = sorted(t.pk for t in tenants)
    existing = set(
        Subscription.objects.select_for_update().filter(tenant_id__in=ids).values_list("tenant_id", flat=True)
    )
    audit.queryset_update(Subscription.objects.filter(tenant_id__in=existing), plan=plan)
    audit.record_created(
        Subscription.objects.bulk_create([Subscription(tenant_id=i, plan=plan) for i in ids if i not in existing])
    )
    return len(ids)


def subscription_webhook_secret_set(*, subscription: Subscription, secret: str) -> None:
    """Store the alert webhook's signing secret encrypted; an empty secret clears it."""
    subscription.alert_webhook_secret = encrypt(secret) if secret else ""
    subscription.save(update_fields=["alert_webhook_secret"])
