"""The key API's parts below HTTP: the body's parse (tenants.profiles.api_key_spec_clean), the
update and revoke services, and the announcement of a changed key to every gateway process
(tenants/key_events.py → gateway/key_events.py → registry.keys_forget). The endpoints themselves
are tested over HTTP in test_keys_api_live.py.
"""

import asyncio
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import redis
from django.conf import settings
from django.db import connections, transaction

from gateway import key_events, keys_api, registry
from tenants.key_events import channel, message_ids
from tenants.keys import key_hash
from tenants.models import Project
from tenants.profiles import api_key_spec_clean
from tenants.services import InvalidKey, Refused, api_key_create, api_key_revoke, api_key_update
from tests.test_limits import spare_redis  # noqa: F401 (a fixture)

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


# --- the body ----------------------------------------------------------------------------------


def test_the_body_becomes_key_fields_and_leaves_out_what_it_does_not_give():
    cleaned, problems = api_key_spec_clean(
        {
            "name": "ci",
            "project": None,
            "rate_limit": {"requests_per_minute": 5, "max_concurrent": None},
            "monthly_budget": "12.50",
            "models": ["b", "a", "b"],
            "expires_at": "2027-01-01T00:00:00+02:00",
        },
        now=NOW,
    )
    assert problems == []
    assert cleaned == {
        "name": "ci",
        "project": None,
        "requests_per_minute": 5,
        "max_concurrent": None,
        "monthly_budget": Decimal("12.50"),
        "allowed_models": ["a", "b"],
        "expires_at": datetime(2026, 12, 31, 22, 0, tzinfo=UTC),
    }
    assert api_key_spec_clean({}, now=NOW) == ({}, [])


def test_every_problem_of_a_body_is_listed_at_its_path():
    _, problems = api_key_spec_clean(
        {
            "rate_limit": {"tokens_per_minute": 2.5, "rpm": 1},
            "daily_budget": 1.5,
            "models": ["ok", 3],
            "expires_at": "2026-12-07T11:59:59Z",
            "key": "tpk_mine",
        },
        now=NOW,
    )
    assert sorted(".".join(map(str, p.path)) for p in problems) == [
        "daily_budget",
        "expires_at",
        "key",
        "models.1",
        "rate_limit.rpm",
        "rate_limit.tokens_per_minute",
    ]
    assert api_key_spec_clean([], now=NOW)[1][0].path == ("body",)


def test_a_message_names_key_ids_and_the_channel_its_database():
    assert message_ids(b"12,x,13") == [12, 13]
    assert channel("redis://127.0.0.1:6379/6") == "gw:keys:changed:6"
    assert channel("redis://127.0.0.1:6379") == "gw:keys:changed:0"


# --- reads ---------------------------------------------------------------------------------------


def test_the_list_costs_two_queries_whatever_its_length(catalog, alice, bob, django_assert_num_queries):
    search = Project.objects.create(tenant=alice, name="search")
    for i in range(5):
        key, _ = api_key_create(tenant=alice, name=f"k{i}", project=search if i % 2 else None)
        key.allowed_models.set([catalog["gpt"], catalog["claude"]])
    api_key_create(tenant=bob)
    with django_assert_num_queries(2):  # the keys with their projects, then their models
        page = keys_api._list(alice.pk, None, 100)
    assert [k["name"] for k in page["data"]] == [f"k{i}" for i in range(5)]
    assert {k["project"] for k in page["data"]} == {"search", None}
    assert all(k["models"] == ["claude-test", "gpt-test"] for k in page["data"])


def test_an_id_that_cannot_be_a_key_is_no_key(alice):
    for text in ("0", "-1", "1e3", "٣", "9" * 5000, "99999999999999999999"):
        assert not keys_api._is_id(text)
    with pytest.raises(keys_api.GatewayError) as missing:
        keys_api._detail(alice.pk, "9" * 5000)
    assert missing.value.status == 404


# --- services ----------------------------------------------------------------------------------


def test_an_update_refuses_another_tenants_project_and_a_revoked_key(alice, bob):
    key, _ = api_key_create(tenant=alice, name="k")
    theirs = Project.objects.create(tenant=bob, name="theirs")
    with pytest.raises(Refused) as refused:
        api_key_update(key=key, changes={"project": theirs, "requests_per_minute": 0})
    assert refused.value.param == "requests_per_minute"
    assert any(p.startswith("project: unknown project") for p in refused.value.problems)
    key.refresh_from_db()
    assert (key.project, key.requests_per_minute) == (None, None)
    api_key_revoke(key=key)
    with pytest.raises(InvalidKey):
        api_key_update(key=key, changes={"name": "again"})


def test_an_update_checks_only_the_models_it_adds(catalog, alice):
    alice.allowed_models.set([catalog["gpt"], catalog["claude"]])
    key, _ = api_key_create(tenant=alice, allowed_models=[catalog["gpt"]])
    alice.allowed_models.set([catalog["claude"]])  # gpt left the tenant since
    updated = api_key_update(key=key, changes={"allowed_models": [catalog["gpt"], catalog["claude"]]})
    assert sorted(m.name for m in updated.allowed_models.all()) == ["claude-test", "gpt-test"]
    with pytest.raises(Refused):
        api_key_update(key=key, changes={"allowed_models": [catalog["azure"]]})
    with pytest.raises(TypeError):
        api_key_update(key=key, changes={"is_admin": True})


# --- announcements -------------------------------------------------------------------------------

needs_redis = pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="announcements need REDIS_URL")


@needs_redis
@pytest.mark.django_db(transaction=True)
def test_a_revocation_is_announced_after_its_commit_only(alice):
    key, _ = api_key_create(tenant=alice)
    subscriber = redis.Redis.from_url(settings.REDIS_URL).pubsub(ignore_subscribe_messages=True)
    subscriber.subscribe(channel(settings.REDIS_URL))
    try:
        subscriber.get_message(timeout=1)  # the subscription's confirmation
        with transaction.atomic():
            api_key_revoke(key=key)
            assert subscriber.get_message(timeout=0.3) is None  # not yet: a process would reload the old row
        message = subscriber.get_message(timeout=2)
        assert message_ids(message["data"]) == [key.pk]
    finally:
        subscriber.close()


def _run(coroutine):
    async def and_close():
        try:
            return await coroutine
        finally:
            await asyncio.to_thread(connections.close_all)

    return asyncio.run(and_close())


@needs_redis
@pytest.mark.django_db(transaction=True)
def test_a_listening_process_forgets_a_revoked_key_at_once(alice, settings):
    settings.GATEWAY_AUTH_CACHE_SECONDS = 300
    key, raw = api_key_create(tenant=alice)
    digest = key_hash(raw, pepper=settings.API_KEY_PEPPER)

    async def scenario():
        registry.clear_caches()
        await key_events.start()
        try:
            assert (await registry.caller_for_key(raw)).key.id == key.pk
            assert registry._keys.get(digest) is not None  # cached for 5 minutes
            await asyncio.to_thread(api_key_revoke, key=key)
            for _ in range(100):
                if registry._keys.get(digest) is None:
                    break
                await asyncio.sleep(0.01)
            assert registry._keys.get(digest) is None
            assert await registry.caller_for_key(raw) is None
        finally:
            await key_events.stop()

    _run(scenario())


@pytest.mark.django_db(transaction=True)
def test_a_look_up_that_overlaps_an_announcement_is_not_cached(alice, settings, monkeypatch):
    settings.GATEWAY_AUTH_CACHE_SECONDS = 300
    _, raw = api_key_create(tenant=alice)
    digest = key_hash(raw, pepper=settings.API_KEY_PEPPER)
    real_db_call = registry.db_call

    async def announced_meanwhile(fn, *args):
        result = await real_db_call(fn, *args)
        registry.keys_forget([12345])  # any key: this process cannot tell which row was read
        return result

    async def scenario():
        registry.clear_caches()
        monkeypatch.setattr(registry, "db_call", announced_meanwhile)
        assert await registry.caller_for_key(raw) is not None  # answered...
        assert registry._keys.get(digest) is None  # ...but not kept
        monkeypatch.setattr(registry, "db_call", real_db_call)
        assert await registry.caller_for_key(raw) is not None
        assert registry._keys.get(digest) is not None

    _run(scenario())
    registry.clear_caches()


def test_the_listener_is_off_without_redis(settings):
    settings.REDIS_URL = ""

    async def scenario():
        await key_events.start()
        assert key_events.listener.task is None

    asyncio.run(scenario())


def test_an_update_keeps_what_it_does_not_change(alice):
    key, _ = api_key_create(tenant=alice, expires_at=NOW + timedelta(days=3650))
    updated = api_key_update(key=key, changes={"name": "renamed"})
    assert (updated.name, updated.expires_at) == ("renamed", NOW + timedelta(days=3650))


def test_the_listener_forgets_every_key_when_it_listens_again_after_an_outage(request):
    """Announcements made while Redis was away are lost: coming back, the process forgets all."""
    server = request.getfixturevalue("spare_redis")  # a redis-server of this test's own

    def cached(key_id: int) -> bool:
        return registry._keys.get(f"digest-{key_id}") is not None

    def cache(key_id: int) -> None:
        view = registry.KeyView(
            id=key_id,
            tenant_id=1,
            allowed_model_ids=frozenset(),
            requests_per_minute=None,
            tokens_per_minute=None,
            max_concurrent=None,
        )
        registry._keys.put(f"digest-{key_id}", view, 300)
        registry._key_digests[key_id] = f"digest-{key_id}"

    async def until(condition, seconds: float = 10) -> None:
        async with asyncio.timeout(seconds):
            while not condition():
                await asyncio.sleep(0.02)

    async def scenario():
        registry.clear_caches()
        await key_events.start()
        subscribed = key_events.listener.ready
        try:
            assert subscribed.is_set()
            cache(7)
            cache(8)
            redis.Redis.from_url(server.url).publish(channel(server.url), "7")
            await until(lambda: not cached(7))
            assert cached(8)  # only what was announced
            await asyncio.to_thread(server.stop)
            await until(lambda: not subscribed.is_set())
            assert cached(8)  # while Redis is away the cache period is the bound
            await asyncio.to_thread(server.start)
            await until(subscribed.is_set)
            assert not cached(8)
        finally:
            await key_events.stop()
            registry.clear_caches()

    asyncio.run(scenario())
