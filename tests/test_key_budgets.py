"""A key's own monthly budget, outside the hot path: the field and its validation, rotation, the
staff admin (key pages, the tenant's inline and overview), what the gateway's registry loads, and
the beat task that reconciles the key counters with the database. Admission itself is in
tests/test_limits.py (service level) and tests/test_limits_live.py (two gateway processes)."""

import asyncio
import re
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.db import IntegrityError, connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from billing.models import UsageRecord
from billing.periods import month_start
from billing.selectors import month_to_date_spend_by_key, utc_today
from console.analytics import tenant_overview
from gateway import limits, registry
from gateway.tasks import reconcile_budget_counters
from tenants.models import ApiKey
from tenants.selectors import api_key_for_secret
from tenants.services import Refused, api_key_create, api_key_revoke, api_key_rotate

from .test_admin import change_url, changelist_url, form_data

RAW_KEY = re.compile(r"tpk_[0-9A-Za-z]{38}")


def usage(tenant, key, cost: str, *, at=None) -> UsageRecord:
    return UsageRecord.objects.create(
        request_id=uuid.uuid4().hex,
        created_at=at or timezone.now(),
        tenant=tenant,
        api_key=key,
        model="gpt-test",
        endpoint="chat",
        status_code=200,
        cost=Decimal(cost),
    )


def last_month():
    return timezone.now().replace(day=1, hour=0, minute=0, second=0, microsecond=0) - timedelta(hours=1)


def run(coroutine):
    """Gateway code as the server runs it: queries on asgiref's worker thread, Redis on this loop."""

    async def and_close():
        try:
            return await coroutine
        finally:
            await limits.aclose()
            await sync_to_async(connections.close_all)()

    return asyncio.run(and_close())


# --- the field --------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("budget", [Decimal("0"), Decimal("-1"), Decimal("1.005"), Decimal("1e12"), 1.5, "5"])
def test_a_key_budget_must_be_an_amount_above_zero(alice, budget):
    with pytest.raises(Refused) as caught:
        api_key_create(tenant=alice, name="x", monthly_budget=budget)
    assert caught.value.problems[0].startswith("monthly_budget: ")
    assert not ApiKey.objects.filter(name="x").exists()


@pytest.mark.django_db
def test_a_key_budget_is_kept_exactly_and_the_database_refuses_a_zero_one(alice):
    key, _ = api_key_create(tenant=alice, monthly_budget=Decimal("12.34"))
    key.refresh_from_db()
    assert key.monthly_budget == Decimal("12.34")
    assert api_key_create(tenant=alice, name="none")[0].monthly_budget is None
    with pytest.raises(IntegrityError), transaction.atomic():
        ApiKey.objects.filter(pk=key.pk).update(monthly_budget=Decimal("0"))


@pytest.mark.django_db
def test_rotation_keeps_the_budget_and_the_new_key_counts_its_own_records(alice):
    old, _ = api_key_create(tenant=alice, name="ci", monthly_budget=Decimal("3.00"))
    usage(alice, old, "1.5")
    new, _ = api_key_rotate(key=old, grace=timedelta(hours=1))
    assert new.monthly_budget == Decimal("3.00")
    spend = month_to_date_spend_by_key(tenant_id=alice.pk, key_ids=[old.pk, new.pk], now=timezone.now())
    assert spend == {old.pk: Decimal("1.5"), new.pk: Decimal("0")}


@pytest.mark.django_db
def test_the_month_to_date_of_a_key_is_its_own_records_of_this_month_in_its_own_tenant(alice, bob):
    key, _ = api_key_create(tenant=alice, monthly_budget=Decimal("5"))
    sibling, _ = api_key_create(tenant=alice, name="sibling")
    usage(alice, key, "0.25")
    usage(alice, key, "0.000000000001")
    usage(alice, key, "7", at=last_month())
    usage(alice, sibling, "2")
    usage(alice, None, "4")
    # A record of another tenant naming this key id (it cannot happen; the scope says so anyway).
    usage(bob, key, "9")
    spend = month_to_date_spend_by_key(tenant_id=alice.pk, key_ids=[key.pk, sibling.pk], now=timezone.now())
    assert spend == {key.pk: Decimal("0.250000000001"), sibling.pk: Decimal("2")}
    assert month_to_date_spend_by_key(tenant_id=bob.pk, key_ids=[sibling.pk], now=timezone.now()) == {
        sibling.pk: Decimal("0")
    }


# --- the staff admin --------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_add_page_creates_a_key_with_a_budget_and_refuses_a_zero_one(admin_client, alice):
    url = reverse("admin:tenants_apikey_add")
    data = {"tenant": alice.pk, "name": "capped", "expires_at_0": "", "expires_at_1": ""}

    refused = admin_client.post(url, {**data, "monthly_budget": "0"})
    assert refused.status_code == 200
    assert "must be an amount in USD above zero" in refused.content.decode()
    assert not RAW_KEY.search(refused.content.decode())
    assert not ApiKey.objects.filter(name="capped").exists()

    created = admin_client.post(url, {**data, "monthly_budget": "25.50"})
    assert created.status_code == 200
    key = api_key_for_secret(raw_key=RAW_KEY.findall(created.content.decode())[0])
    assert (key.name, key.monthly_budget) == ("capped", Decimal("25.50"))


@pytest.mark.django_db
def test_the_change_page_sets_and_clears_a_key_budget_and_the_lists_show_it(admin_client, alice):
    key, _ = api_key_create(tenant=alice, name="ci")
    url = change_url(key)
    data = form_data(admin_client.get(url))

    assert admin_client.post(url, {**data, "monthly_budget": ["-3"]}).status_code == 200
    key.refresh_from_db()
    assert key.monthly_budget is None

    assert admin_client.post(url, {**data, "monthly_budget": ["7.25"]}).status_code == 302
    key.refresh_from_db()
    assert key.monthly_budget == Decimal("7.25")
    page = admin_client.get(changelist_url(ApiKey))
    assert "budgets (usd)" in page.content.decode().lower()  # the monthly and daily budgets' column
    assert "7.25 / month" in page.content.decode()
    tenant_page = admin_client.get(change_url(alice)).content.decode()
    assert "7.25" in tenant_page  # the tenant's read-only keys inline

    assert admin_client.post(url, {**data, "monthly_budget": [""]}).status_code == 302
    key.refresh_from_db()
    assert key.monthly_budget is None


def key_budget_cell(html: str, key: ApiKey) -> str:
    match = re.search(rf'<tr data-key="{key.pk}">.*?<td class="key-budget">(.*?)</td>', html, re.S)
    assert match, html
    return match.group(1).strip()


@pytest.mark.django_db
def test_the_tenant_overview_shows_each_keys_budget_and_its_spend_this_month(admin_client, alice):
    capped, _ = api_key_create(tenant=alice, name="capped")
    free, _ = api_key_create(tenant=alice, name="free")
    usage(alice, capped, "0.25")
    usage(alice, capped, "0.000000000004")
    usage(alice, capped, "3", at=last_month())
    usage(alice, free, "2")
    url = reverse("admin:tenants_tenant_overview", args=[alice.pk])
    with CaptureQueriesContext(connection) as without_budgets:
        assert admin_client.get(url).status_code == 200

    ApiKey.objects.filter(pk=capped.pk).update(monthly_budget=Decimal("5.00"))
    with CaptureQueriesContext(connection) as with_budgets:
        html = admin_client.get(url).content.decode()

    assert key_budget_cell(html, capped) == "0.25 of 5.00 (5 %)"
    assert key_budget_cell(html, free) == "—"
    assert len(with_budgets.captured_queries) == len(without_budgets.captured_queries)  # in the keys query
    lines = {
        line.id: line
        for line in tenant_overview(tenant_id=alice.pk, start=month_start(utc_today()), end=utc_today()).keys
    }
    assert (lines[capped.pk].monthly_budget, lines[capped.pk].month_to_date) == (
        Decimal("5.00"),
        Decimal("0.250000000004"),
    )
    assert (lines[free.pk].monthly_budget, lines[free.pk].month_to_date) == (None, None)


# --- the gateway's view of it and the reconcile task ------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_gateway_loads_a_keys_budget_and_its_month_from_the_database(alice, settings):
    settings.GATEWAY_AUTH_CACHE_SECONDS = 0
    registry.clear_caches()
    key, raw = api_key_create(tenant=alice, monthly_budget=Decimal("4.00"))
    _, other_raw = api_key_create(tenant=alice, name="other")
    usage(alice, key, "1.25")
    usage(alice, key, "8", at=last_month())
    usage(alice, None, "3")
    caller = run(registry.caller_for_key(raw))
    assert caller.key.monthly_budget == Decimal("4.00")
    assert run(registry.caller_for_key(other_raw)).key.monthly_budget is None
    assert run(registry.key_month_to_date(alice.pk, key.pk)) == Decimal("1.25")
    registry.clear_caches()


@pytest.mark.django_db(transaction=True)
def test_the_beat_task_resets_the_counters_of_usable_keys_with_a_budget(alice, bob):
    capped, _ = api_key_create(tenant=alice, name="capped", monthly_budget=Decimal("10"))
    free, _ = api_key_create(tenant=alice, name="free")
    revoked, _ = api_key_create(tenant=alice, name="revoked", monthly_budget=Decimal("10"))
    api_key_revoke(key=revoked)
    bobs, _ = api_key_create(tenant=bob, name="bobs", monthly_budget=Decimal("1"))
    usage(alice, capped, "0.5")
    usage(alice, capped, "0.000000000007")
    usage(alice, capped, "6", at=last_month())
    usage(alice, free, "2")
    usage(alice, revoked, "1")
    # Counters that drifted (a settlement lost while Redis was away, say).
    run(limits.reconcile_key(capped.tenant_id, capped.pk, Decimal("9")))
    run(limits.reconcile_key(bobs.tenant_id, bobs.pk, Decimal("9")))

    # Neither tenant has a budget: only the two usable budgeted keys are reset.
    assert reconcile_budget_counters.apply().get() == 2

    assert run(limits.key_spend_this_month(capped.tenant_id, capped.pk)) == Decimal("0.500000000007")
    assert run(limits.key_spend_this_month(bobs.tenant_id, bobs.pk)) == Decimal("0")
    assert run(limits.key_spend_this_month(free.tenant_id, free.pk)) is None
    assert run(limits.key_spend_this_month(revoked.tenant_id, revoked.pk)) is None
    assert run(limits.spend_this_month(alice.pk)) is None
