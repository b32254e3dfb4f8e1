"""The response cache, through a live gateway with the real SDKs: an identical request of the same
tenant within its TTL is answered without calling the provider, recorded as a cache hit at zero
cost with the tokens (so the saving) of the original, and never shared between tenants.
"""

import time
from decimal import Decimal

import anthropic
import httpx2
import openai
import pytest

from billing.models import UsageRecord
from billing.pricing import Price, Tokens, request_cost
from tenants.models import Tenant

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def upstream(mock_llm):
    """The mock provider's request log, emptied first: how many calls really went upstream."""
    httpx2.delete(f"{mock_llm}/_mock/requests")

    def calls() -> int:
        return len(httpx2.get(f"{mock_llm}/_mock/requests").json())

    return calls


def caching(tenant: Tenant, seconds: int | None = 60) -> Tenant:
    tenant.response_cache_seconds = seconds
    tenant.save()
    return tenant


def chat(gateway: str, key: str, *, headers: dict | None = None, **params):
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=key, max_retries=0)
    params = {"model": "gpt-test", "messages": QUESTION, "max_tokens": 40, **params}
    return client.chat.completions.with_raw_response.create(extra_headers=headers or {}, **params)


def record_of(raw) -> UsageRecord:
    return UsageRecord.objects.get(request_id=raw.headers["x-request-id"])


def test_a_repeated_request_is_answered_from_the_cache_and_billed_at_zero(gateway, catalog, alice, alice_key, upstream):
    caching(alice)
    first = chat(gateway, alice_key)
    second = chat(gateway, alice_key)

    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert upstream() == 1
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert second.parse().usage.prompt_tokens == first.parse().usage.prompt_tokens
    original, hit = record_of(first), record_of(second)
    assert (original.cache_hit, hit.cache_hit) == (False, True)
    assert original.cost > 0
    assert hit.cost == Decimal(0)
    assert hit.status_code == 200
    assert (hit.input_tokens, hit.cached_input_tokens, hit.output_tokens) == (
        original.input_tokens,
        original.cached_input_tokens,
        original.output_tokens,
    )
    assert hit.price_id == original.price_id
    price = hit.price
    saved = request_cost(
        tokens=Tokens(input=hit.input_tokens, cached_input=hit.cached_input_tokens, output=hit.output_tokens),
        price=Price(
            input_per_1m=price.input_per_1m,
            output_per_1m=price.output_per_1m,
            cached_input_per_1m=price.cached_input_per_1m,
            cache_write_per_1m=price.cache_write_per_1m,
        ),
    )
    assert saved == original.cost  # what the hit saved is exactly what the original cost


def test_another_tenant_never_sees_the_entry(gateway, catalog, alice, alice_key, bob, bob_key, upstream):
    caching(alice)
    caching(bob)
    chat(gateway, alice_key)
    bobs = chat(gateway, bob_key)
    assert bobs.headers["x-cache"] == "miss"
    assert upstream() == 2
    assert chat(gateway, bob_key).headers["x-cache"] == "hit"  # his own entry, now


def test_any_difference_in_the_request_is_a_miss(gateway, catalog, alice, alice_key, upstream):
    caching(alice)
    chat(gateway, alice_key)
    assert chat(gateway, alice_key, temperature=0.5).headers["x-cache"] == "miss"
    assert chat(gateway, alice_key, max_tokens=41).headers["x-cache"] == "miss"
    other = [{"role": "user", "content": "What is the capital of Italy?"}]
    assert chat(gateway, alice_key, messages=other).headers["x-cache"] == "miss"
    assert upstream() == 4


def test_an_alias_and_its_model_share_entries(gateway, catalog, alice, alice_key, upstream):
    alice.model_aliases = {"fast": "gpt-test"}
    caching(alice)
    chat(gateway, alice_key)
    aliased = chat(gateway, alice_key, model="fast")
    assert aliased.headers["x-cache"] == "hit"
    assert aliased.parse().model == "fast"  # the name the client used
    assert upstream() == 1


def test_without_a_cache_every_request_goes_upstream_and_says_nothing(gateway, catalog, alice, alice_key, upstream):
    first, second = chat(gateway, alice_key), chat(gateway, alice_key)
    assert "x-cache" not in first.headers
    assert "x-cache" not in second.headers
    assert upstream() == 2
    assert not UsageRecord.objects.filter(cache_hit=True).exists()


def test_an_entry_expires_with_the_tenants_ttl(gateway, catalog, alice, alice_key, upstream):
    caching(alice, seconds=1)
    chat(gateway, alice_key)
    time.sleep(1.2)
    assert chat(gateway, alice_key).headers["x-cache"] == "miss"
    assert upstream() == 2


def test_cache_control_no_cache_refreshes_and_no_store_bypasses(gateway, catalog, alice, alice_key, upstream):
    caching(alice)
    assert chat(gateway, alice_key, headers={"cache-control": "no-store"}).headers.get("x-cache") is None
    assert chat(gateway, alice_key).headers["x-cache"] == "miss"  # no-store kept nothing
    assert chat(gateway, alice_key, headers={"cache-control": "no-cache"}).headers["x-cache"] == "miss"
    assert chat(gateway, alice_key).headers["x-cache"] == "hit"
    assert upstream() == 3


def test_streamed_requests_are_not_cached(gateway, catalog, alice, alice_key, upstream):
    caching(alice)
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=alice_key, max_retries=0)
    for _ in range(2):
        with client.chat.completions.with_streaming_response.create(
            model="gpt-test", messages=QUESTION, max_tokens=40, stream=True
        ) as response:
            assert "x-cache" not in response.headers
            assert "".join(response.iter_lines())
    assert upstream() == 2
    assert not UsageRecord.objects.filter(cache_hit=True).exists()


def test_the_messages_endpoint_caches_in_its_own_format(gateway, catalog, alice, alice_key, upstream):
    caching(alice)
    client = anthropic.Anthropic(base_url=gateway, api_key=alice_key, max_retries=0)
    answers = [
        client.messages.with_raw_response.create(model="claude-test", max_tokens=40, messages=QUESTION)
        for _ in range(2)
    ]
    assert [a.headers["x-cache"] for a in answers] == ["miss", "hit"]
    assert answers[1].parse().content[0].text == answers[0].parse().content[0].text
    assert answers[1].parse().type == "message"
    # The same question on the other endpoint is another wire format: its own entry.
    assert chat(gateway, alice_key, model="claude-test").headers["x-cache"] == "miss"
    assert upstream() == 2


def test_a_hit_uses_none_of_the_tokens_per_minute(gateway, catalog, alice, alice_key, upstream):
    caching(alice)
    alice.tokens_per_minute = 200  # ~10 prompt + 40 max_tokens reserved per request
    alice.save()
    statuses = [chat(gateway, alice_key).status_code]
    statuses += [chat(gateway, alice_key).status_code for _ in range(10)]
    assert statuses == [200] * 11  # eleven requests of ~50 tokens each would not fit in 200 otherwise
    assert upstream() == 1


def test_without_redis_entries_live_in_process_memory_and_expire(settings):
    """The demo's path (no REDIS_URL): the same behaviour on an in-process store."""
    import asyncio

    from gateway.cache import Cached, cache_key, cache_lookup, cache_store, clear_memory

    settings.REDIS_URL = ""
    clear_memory()
    body = {"model": "gpt-test", "messages": QUESTION}
    key = cache_key(tenant_id=1, ttl=1, family="openai", model="gpt-test", body=body, cache_control="")
    other_tenant = cache_key(tenant_id=2, ttl=1, family="openai", model="gpt-test", body=body, cache_control="")
    entry = Cached(response={"id": "x", "choices": []}, tokens=Tokens(input=10, cached_input=4, output=3))

    async def scenario():
        await cache_store(key, entry, ttl=1)
        found = await cache_lookup(key, cache_control="")
        elsewhere = await cache_lookup(other_tenant, cache_control="")
        refreshed = await cache_lookup(key, cache_control="no-cache")
        await asyncio.sleep(1.1)
        return found, elsewhere, refreshed, await cache_lookup(key, cache_control="")

    found, elsewhere, refreshed, expired = asyncio.run(scenario())
    assert found == entry
    assert (elsewhere, refreshed, expired) == (None, None, None)
    assert cache_key(tenant_id=1, ttl=None, family="openai", model="gpt-test", body=body, cache_control="") is None
    assert cache_key(tenant_id=1, ttl=5, family="openai", model="gpt-test", body=body, cache_control="no-store") is None
