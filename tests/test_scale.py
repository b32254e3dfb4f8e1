"""Thousands of tenants (bench/tenants_scale.py): per-process caches stay within their size
settings (gateway/lru.py; the least recently used entry is dropped, and a dropped entry is only
read again from the database), and list pages do not grow with the tenants."""

import asyncio

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from gateway import metering, registry
from gateway.cache import _Memory
from gateway.lru import LRU
from tenants.services import api_key_create

from .conftest import make_tenant


def test_the_least_recently_used_entry_is_dropped_past_the_bound():
    size = 3
    cache = LRU(lambda: size)
    for key in "abc":
        cache[key] = key.upper()
    assert cache.get("a") == "A"  # a is now the newest: b is the oldest
    cache["d"] = "D"
    assert len(cache) == 3
    assert "b" not in cache
    assert [cache.get(k) for k in "acd"] == ["A", "C", "D"]
    size = 1  # read at each insertion: a smaller setting shrinks the cache at the next one
    cache["e"] = "E"
    assert len(cache) == 1
    assert cache.get("e") == "E"
    assert cache.get("a", "missing") == "missing"


def test_the_response_caches_memory_store_is_bounded(settings):
    settings.GATEWAY_RESPONSE_CACHE_MEMORY_SIZE = 2
    memory = _Memory()
    for key in ("k1", "k2", "k3"):
        memory.set(key, key.encode(), 60)
    assert memory.get("k1") is None
    assert memory.get("k3") == b"k3"
    assert len(memory._entries) == 2


def test_key_touch_and_budget_check_timestamps_are_bounded(settings):
    settings.GATEWAY_KEY_CACHE_SIZE = 5
    settings.GATEWAY_TENANT_CACHE_SIZE = 4
    metering._key_touched.clear()
    metering._budget_checked.clear()
    try:
        assert all(metering._due_for_touch(key_id) for key_id in range(50))
        assert all(metering._due_for_budget_check(tenant_id, True) for tenant_id in range(50))
        assert len(metering._key_touched) == 5
        assert len(metering._budget_checked) == 4
        assert not metering._due_for_touch(49)  # the newest are still remembered
        assert metering._due_for_touch(0)  # a dropped one is only written once more
    finally:
        metering._key_touched.clear()
        metering._budget_checked.clear()


@pytest.mark.django_db(transaction=True)
def test_a_process_seeing_every_key_keeps_at_most_its_setting(settings):
    settings.GATEWAY_AUTH_CACHE_SECONDS = 300
    settings.GATEWAY_KEY_CACHE_SIZE = 4
    settings.GATEWAY_TENANT_CACHE_SIZE = 2
    tenants = [make_tenant(f"bound-{n}") for n in range(3)]
    raws = [api_key_create(tenant=tenants[n % 3], name=f"k{n}")[1] for n in range(9)]
    registry.clear_caches()

    async def look_up_all():
        try:
            return [await registry.caller_for_key(raw) for raw in raws]
        finally:
            await sync_to_async(connections.close_all)()

    try:
        callers = asyncio.run(look_up_all())
        assert all(c is not None for c in callers)
        assert [c.tenant.slug for c in callers] == [f"bound-{n % 3}" for n in range(9)]
        assert len(registry._keys) == 4
        assert len(registry._key_digests) == 4
        assert len(registry._tenants) == 2
        # The newest keys are served from memory; a dropped one from the database, the same caller.
        assert sorted(registry._key_digests._entries) == sorted(c.key.id for c in callers[-4:])
        again = asyncio.run(look_up_all())
        assert [c.key.id for c in again] == [c.key.id for c in callers]
        assert len(registry._keys) == 4
    finally:
        registry.clear_caches()


# --- list pages of a platform with many tenants (bench/tenants_scale.py) ---


@pytest.mark.django_db
def test_the_key_list_does_not_link_every_tenant_past_the_bound(admin_client, monkeypatch):
    from django.test.utils import CaptureQueriesContext

    from console.admin import tenants as tenant_admin

    many = [make_tenant(f"many-{n}") for n in range(6)]
    for tenant in many:
        api_key_create(tenant=tenant, name="k")
    url = "/admin/tenants/apikey/"

    def render(query=""):
        with CaptureQueriesContext(connections["default"]) as queries:
            page = admin_client.get(url + query)
        assert page.status_code == 200
        return page.content.decode(), len(queries)

    few, few_queries = render()
    assert all(f"tenant__id__exact={t.pk}" in few for t in many)  # few tenants: each a link
    monkeypatch.setattr(tenant_admin, "TENANT_FILTER_CHOICES", 3)
    content, queries = render()
    assert not any(f"tenant__id__exact={t.pk}" in content for t in many)
    assert queries <= few_queries + 1  # one count of the tenants, not one row per tenant
    chosen = many[4]
    content, _ = render(f"?tenant__id__exact={chosen.pk}")
    assert f"tenant__id__exact={chosen.pk}" in content  # the chosen one is shown, and can be cleared
    assert f"tenant__id__exact={many[0].pk}" not in content
    assert "many-4" in content
    assert "many-0" not in content.split('id="changelist-filter"')[1]
