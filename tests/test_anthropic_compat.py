"""Anthropic compatibility through a live gateway, with the unchanged anthropic SDK (issue 12, part 3 and 4).

`client.messages.count_tokens` (Claude models through the provider's endpoint, GPT models counted
locally), the `anthropic-beta` header, the `request-id` header, and `/v1/models` in both SDKs'
shapes. After each request the tests read what it left behind: usage records (none for a
count), requests in flight, the requests-per-minute counter, and what the mock provider received.
"""

import asyncio
import time

import anthropic
import httpx2
import pytest
import redis
from django.conf import settings

from billing.models import UsageRecord
from gateway import limits
from tenants.models import Tenant

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "How many tokens is this prompt, roughly speaking?"}]
SYSTEM = "You are a careful counter."


def client(gateway: str, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway, api_key=key, max_retries=0)


def mock_requests(mock_llm: str, path: str) -> list[dict]:
    return [r for r in httpx2.get(f"{mock_llm}/_mock/requests").json() if r["path"] == path]


def live(tenant_id: int) -> limits.LiveUsage:
    async def read():
        try:
            return await limits.live_usage(tenant_id)
        finally:
            await limits.aclose()

    return asyncio.run(read())


def seconds_left_in_the_minute() -> float:
    """On Redis' clock, which the requests-per-minute windows follow."""
    connection = redis.Redis.from_url(settings.REDIS_URL)
    try:
        seconds, micros = connection.time()
    finally:
        connection.close()
    return 60 - (seconds % 60 + micros / 1e6)


@pytest.fixture
def concurrent(alice):
    """alice with a concurrency limit, so that the store counts her requests in flight."""
    Tenant.objects.filter(pk=alice.pk).update(max_concurrent=5)
    return alice


# --- count_tokens ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["claude-test", "gpt-test", "azure-gpt-test"])
def test_count_tokens_equals_the_input_tokens_the_next_message_is_billed(
    gateway, mock_llm, catalog, concurrent, alice_key, model
):
    sdk = client(gateway, alice_key)
    counted = sdk.messages.count_tokens(model=model, system=SYSTEM, messages=MESSAGES)
    message = sdk.messages.create(model=model, max_tokens=20, system=SYSTEM, messages=MESSAGES)

    assert counted.input_tokens > 10
    assert counted.input_tokens == message.usage.input_tokens
    # Not billed: the completion has its record, the count none.
    records = list(UsageRecord.objects.filter(tenant=concurrent))
    assert [(r.endpoint, r.input_tokens) for r in records] == [("messages", message.usage.input_tokens)]
    assert live(concurrent.id).in_flight == 0


def test_count_tokens_of_a_claude_model_asks_the_provider_with_the_upstream_model(
    gateway, mock_llm, catalog, alice, alice_key
):
    raw = client(gateway, alice_key).messages.with_raw_response.count_tokens(model="claude-test", messages=MESSAGES)
    request_id = raw.headers["x-request-id"]
    assert raw.headers["request-id"] == request_id
    seen = [
        r
        for r in mock_requests(mock_llm, "/v1/messages/count_tokens")
        if r["headers"].get("x-gateway-request-id") == request_id
    ]
    assert len(seen) == 1
    assert seen[0]["body"] == {"model": "claude-haiku-4-5", "messages": MESSAGES}
    assert raw.parse().input_tokens > 0


def test_count_tokens_of_a_gpt_model_calls_no_provider(gateway, mock_llm, catalog, alice, alice_key):
    httpx2.delete(f"{mock_llm}/_mock/requests")
    client(gateway, alice_key).messages.count_tokens(model="gpt-test", messages=MESSAGES)
    assert httpx2.get(f"{mock_llm}/_mock/requests").json() == []


def test_count_tokens_counts_toward_requests_per_minute(gateway, catalog, concurrent, alice_key):
    Tenant.objects.filter(pk=concurrent.pk).update(requests_per_minute=2)
    if (left := seconds_left_in_the_minute()) < 8:
        time.sleep(left + 0.2)  # the three calls must fall in one minute
    sdk = client(gateway, alice_key)
    sdk.messages.count_tokens(model="claude-test", messages=MESSAGES)
    sdk.messages.count_tokens(model="gpt-test", messages=MESSAGES)
    with pytest.raises(anthropic.RateLimitError) as refused:
        sdk.messages.count_tokens(model="claude-test", messages=MESSAGES)

    assert refused.value.body["error"]["type"] == "rate_limit_error"
    assert int(refused.value.response.headers["retry-after"]) >= 1
    usage = live(concurrent.id)
    assert usage.requests_this_minute == 2
    assert usage.in_flight == 0
    assert not UsageRecord.objects.filter(tenant=concurrent).exists()


def test_count_tokens_refuses_bad_input_in_anthropics_shape(gateway, catalog, alice, alice_key):
    sdk = client(gateway, alice_key)
    with pytest.raises(anthropic.BadRequestError) as bad:
        sdk.messages.count_tokens(model="claude-test", messages=MESSAGES, extra_body={"max_tokens": 10})
    assert bad.value.body["type"] == "error"
    assert bad.value.body["error"]["type"] == "invalid_request_error"
    assert "`max_tokens`" in bad.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as bad:
        sdk.messages.count_tokens(model="claude-test", messages=[{"role": "system", "content": "x"}])
    assert "`messages[0].role`" in bad.value.body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError) as missing:
        sdk.messages.count_tokens(model="no-such-model", messages=MESSAGES)
    assert missing.value.body["error"]["type"] == "not_found_error"
    assert missing.value.response.headers["request-id"] == missing.value.response.headers["x-request-id"]
    assert live(alice.id).in_flight == 0


def test_count_tokens_passes_an_upstream_error_on_in_anthropics_shape(gateway, catalog, concurrent, alice_key):
    with pytest.raises(anthropic.BadRequestError) as refused:
        client(gateway, alice_key).messages.count_tokens(
            model="claude-test", messages=[{"role": "user", "content": "[[mock:status=400]]"}]
        )
    assert refused.value.body["type"] == "error"
    assert live(concurrent.id).in_flight == 0
    assert not UsageRecord.objects.filter(tenant=concurrent).exists()
