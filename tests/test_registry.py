"""The gateway's in-process snapshots: what is cached, for how long, and what is refused."""

import asyncio
import time

import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from django.utils import timezone

from gateway import registry
from tenants.services import api_key_create, api_key_revoke

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_caches(settings):
    settings.GATEWAY_AUTH_CACHE_SECONDS = 0.5
    registry.clear_caches()
    yield
    registry.clear_caches()


def run(coroutine):
    """Run gateway code as the server would: its queries happen on asgiref's worker thread."""

    async def and_release_connections():
        try:
            return await coroutine
        finally:
            await sync_to_async(connections.close_all)()

    return asyncio.run(and_release_connections())


def caller(raw):
    return run(registry.caller_for_key(raw))


def test_a_key_resolves_to_its_tenant(alice, alice_key):
    found = caller(alice_key)
    assert found.tenant.slug == "alice"
    assert found.tenant.active


def test_unknown_malformed_and_revoked_keys_look_the_same(alice):
    key, raw = api_key_create(tenant=alice)
    api_key_revoke(key=key)
    assert caller(raw) is None
    assert caller("tpk_" + "x" * 38) is None  # wrong checksum: refused without a query
    assert caller("nope") is None


def test_a_revoked_key_stops_working_once_the_cache_expires(alice):
    key, raw = api_key_create(tenant=alice)
    assert caller(raw) is not None
    api_key_revoke(key=key)
    assert caller(raw) is not None  # still cached: the documented bound, not forever
    time.sleep(0.6)
    assert caller(raw) is None


def test_an_expired_key_is_refused(alice):
    _, raw = api_key_create(tenant=alice, expires_at=timezone.now() - timezone.timedelta(seconds=1))
    assert caller(raw) is None


def test_the_catalog_snapshot_picks_the_price_in_force(catalog):
    from billing.models import ModelPrice

    later = timezone.now() + timezone.timedelta(days=1)
    ModelPrice.objects.create(model=catalog["gpt"], effective_from=later, input_per_1m="1", output_per_1m="2")
    models = run(registry.catalog())
    gpt = models["gpt-test"]
    assert str(gpt.price_at(timezone.now()).price.input_per_1m) == "0.150000"
    assert str(gpt.price_at(later).price.input_per_1m) == "1.000000"
    assert [d.upstream for d in gpt.deployments_in("")] == ["gpt-4o-mini-2024-07-18"]


def test_the_catalog_carries_each_models_routing_and_every_deployments_settings(catalog, django_assert_num_queries):
    from tenants.models import CatalogModel, Deployment

    gpt = catalog["gpt"]
    gpt.routing, gpt.fallbacks, gpt.affinity = CatalogModel.Routing.WEIGHTED, ["claude-test"], "prefix"
    gpt.save()
    Deployment.objects.filter(model=gpt).update(weight=1, requests_per_minute=500, tokens_per_minute=200_000)
    Deployment.objects.create(
        model=gpt, provider="azure", upstream="gpt4o-prod", priority=1, weight=3, timeout_seconds=12.5
    )
    Deployment.objects.create(model=gpt, provider="openai", upstream="off", priority=2, active=False)
    # One query per table (catalog, deployments, prices and their tiers), however many models.
    with django_assert_num_queries(4):
        models = registry._load_catalog()
    view = models["gpt-test"]
    assert (view.routing, view.fallbacks, view.affinity) == ("weighted", ("claude-test",), "prefix")
    first, second = view.deployments
    assert (first.provider, first.priority, first.weight) == ("openai", 0, 1)
    assert (first.requests_per_minute, first.tokens_per_minute, first.timeout_seconds) == (500, 200_000, None)
    assert (second.provider, second.upstream, second.priority, second.weight) == ("azure", "gpt4o-prod", 1, 3)
    assert (second.requests_per_minute, second.tokens_per_minute, second.timeout_seconds) == (None, None, 12.5)
    claude = models["claude-test"]  # the defaults: today's behaviour
    assert (claude.routing, claude.fallbacks, claude.affinity) == ("priority", (), "")
    assert claude.deployments[0].weight == 1


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """The loaders the registry runs in a worker thread (each a database read), in order."""
    names = []
    original = registry.db_call

    async def counted(fn, *args, **kwargs):
        names.append(fn.__name__)
        return await original(fn, *args, **kwargs)

    monkeypatch.setattr(registry, "db_call", counted)
    return names


def test_requests_that_miss_the_same_entry_at_once_share_one_read(alice, alice_key, catalog, reads):
    """An entry expires for every request at once: fifty requests in flight then read the key,
    the tenant and the catalog once, not fifty times each."""

    async def fifty():
        callers = await asyncio.gather(*(registry.caller_for_key(alice_key) for _ in range(50)))
        models = await asyncio.gather(*(registry.catalog() for _ in range(50)))
        return callers, models

    callers, models = run(fifty())
    assert {c.tenant.slug for c in callers} == {"alice"}
    assert all(m is models[0] for m in models)
    assert "gpt-test" in models[0]
    assert sorted(reads) == ["_load_catalog", "_load_key", "_load_tenant"]
    assert registry._loads == {}  # nothing left behind


def test_a_request_that_gives_up_does_not_cancel_the_read_others_wait_for(alice, alice_key):
    async def scenario():
        first = asyncio.ensure_future(registry.caller_for_key(alice_key))
        second = asyncio.ensure_future(registry.caller_for_key(alice_key))
        await asyncio.sleep(0)  # both are waiting for the one read
        first.cancel()
        found = await second
        return first.cancelled(), found

    cancelled, found = run(scenario())
    assert cancelled
    assert found.tenant.slug == "alice"


def test_a_read_under_way_when_a_key_change_is_announced_is_not_joined(alice, alice_key, reads):
    """A key revoked while its row is being read: a request after the announcement reads again
    instead of sharing the read that may hold the old row."""

    async def scenario():
        before = asyncio.ensure_future(registry.caller_for_key(alice_key))
        await asyncio.sleep(0)  # its read has begun
        registry.keys_forget()  # an announcement (gateway/key_events.py)
        after = await registry.caller_for_key(alice_key)
        return await before, after

    before, after = run(scenario())
    assert before is not None
    assert after is not None
    assert reads.count("_load_key") == 2
