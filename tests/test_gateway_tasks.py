"""The beat task that keeps the gateway's Redis budget counters true to the database."""

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.models import UsageRecord
from gateway import limits
from gateway.tasks import reconcile_budget_counters


def spend_in_redis(tenant_id: int):
    async def read():
        try:
            return await limits.spend_this_month(tenant_id)
        finally:
            await limits.aclose()

    return asyncio.run(read())


@pytest.mark.django_db(transaction=True)
def test_the_counter_is_reset_to_the_months_recorded_spend(alice, bob):
    alice.subscription.monthly_budget = Decimal("10.00")
    alice.subscription.save()
    now = timezone.now()
    for i, cost in enumerate(["0.25", "0.000000000001"]):
        UsageRecord.objects.create(
            request_id=f"r{i}", created_at=now, tenant=alice, model="m", endpoint="chat", status_code=200, cost=cost
        )
    UsageRecord.objects.create(  # last month: not this month's spend
        request_id="old",
        created_at=datetime(2020, 1, 1, tzinfo=UTC),
        tenant=alice,
        model="m",
        endpoint="chat",
        status_code=200,
        cost="5",
    )
    assert reconcile_budget_counters.apply().get() == 1  # bob has no budget: no counter
    assert spend_in_redis(alice.id) == Decimal("0.250000000001")
    assert spend_in_redis(bob.id) is None
