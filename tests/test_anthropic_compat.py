"""Anthropic compatibility through a live gateway, with the unchanged anthropic SDK (issue 12, part 3 and 4).

`client.messages.count_tokens` (Claude models through the provider's endpoint, GPT models counted
locally), the `anthropic-beta` header, the `request-id` header, and `/v1/models` in both SDKs'
shapes. After each request the tests read what it left behind: usage records (none for a
count), requests in flight, the requests-per-minute counter, and what the mock provider received.
"""

import asyncio
import time
from datetime import UTC, datetime

import anthropic
import httpx2
import openai
import pytest
import redis
from django.conf import settings

from billing.models import UsageRecord
from gateway import limits
from tenants.models import CatalogModel, Tenant
from tenants.services import api_key_create

from .conftest import start_gateway, stop
from .test_observability_live import METRICS_TOKEN, samples, scrape, summed

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


# --- anthropic-beta --------------------------------------------------------------------------------

CONTEXT_MANAGEMENT = {"edits": [{"type": "clear_tool_uses_20250919"}]}


def received(mock_llm: str, path: str, request_id: str) -> dict:
    seen = [r for r in mock_requests(mock_llm, path) if r["headers"].get("x-gateway-request-id") == request_id]
    assert len(seen) == 1, seen
    return seen[0]


def test_betas_and_their_body_fields_reach_an_anthropic_deployment(gateway, mock_llm, catalog, alice, alice_key):
    message = client(gateway, alice_key).beta.messages.create(
        model="claude-test",
        max_tokens=20,
        messages=MESSAGES,
        betas=["context-management-2025-06-27", "interleaved-thinking-2025-05-14"],
        context_management=CONTEXT_MANAGEMENT,
    )

    record = UsageRecord.objects.get(tenant=alice)
    assert message._request_id == record.request_id  # the SDK reads `request-id`
    assert (record.status_code, record.input_tokens) == (200, message.usage.input_tokens)
    upstream = received(mock_llm, "/v1/messages", record.request_id)
    assert upstream["headers"]["anthropic-beta"] == "context-management-2025-06-27,interleaved-thinking-2025-05-14"
    assert upstream["body"]["context_management"] == CONTEXT_MANAGEMENT


def test_betas_reach_the_provider_on_a_stream_and_on_a_token_count(gateway, mock_llm, catalog, alice, alice_key):
    sdk = client(gateway, alice_key).beta.messages
    with sdk.stream(
        model="claude-test", max_tokens=20, messages=MESSAGES, betas=["fine-grained-tool-streaming-2025-05-14"]
    ) as stream:
        final = stream.get_final_message()
        stream_id = stream.response.headers["request-id"]
    assert stream_id == stream.response.headers["x-request-id"]
    assert UsageRecord.objects.get(request_id=stream_id).output_tokens == final.usage.output_tokens
    upstream = received(mock_llm, "/v1/messages", stream_id)
    assert upstream["headers"]["anthropic-beta"] == "fine-grained-tool-streaming-2025-05-14"

    raw = sdk.with_raw_response.count_tokens(
        model="claude-test", messages=MESSAGES, betas=["context-management-2025-06-27"],
        context_management=CONTEXT_MANAGEMENT,
    )  # fmt: skip
    upstream = received(mock_llm, "/v1/messages/count_tokens", raw.headers["request-id"])
    # The SDK adds the token-counting beta of its own.
    assert upstream["headers"]["anthropic-beta"] == "context-management-2025-06-27,token-counting-2024-11-01"
    assert upstream["body"]["context_management"] == CONTEXT_MANAGEMENT
    assert raw.parse().input_tokens > 0


def test_an_unknown_beta_is_a_400_naming_the_header(gateway, mock_llm, catalog, alice, alice_key):
    httpx2.delete(f"{mock_llm}/_mock/requests")
    sdk = client(gateway, alice_key).beta.messages
    with pytest.raises(anthropic.BadRequestError) as refused:
        sdk.create(model="claude-test", max_tokens=20, messages=MESSAGES, betas=["no-such-beta-2099-01-01"])
    error = refused.value.body
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert "`anthropic-beta`" in error["error"]["message"]
    assert "`no-such-beta-2099-01-01`" in error["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as refused:
        sdk.count_tokens(model="claude-test", messages=MESSAGES, betas=["no-such-beta-2099-01-01"])
    assert "`anthropic-beta`" in refused.value.body["error"]["message"]
    assert httpx2.get(f"{mock_llm}/_mock/requests").json() == []  # nothing went upstream
    record = UsageRecord.objects.get(tenant=alice)  # the refused message; the count has none
    assert (record.status_code, record.error_type, record.cost) == (400, "unknown_beta", 0)


def test_betas_on_a_translated_model_are_accepted_and_their_body_fields_refused(
    gateway, mock_llm, catalog, alice, alice_key
):
    sdk = client(gateway, alice_key).beta.messages
    message = sdk.create(
        model="gpt-test",
        max_tokens=20,
        messages=MESSAGES,
        betas=["context-management-2025-06-27", "claude-code-20250219"],
    )
    upstream = received(mock_llm, "/v1/chat/completions", message._request_id)
    assert "anthropic-beta" not in upstream["headers"]  # OpenAI has no such header
    with pytest.raises(anthropic.BadRequestError) as refused:
        sdk.create(
            model="gpt-test", max_tokens=20, messages=MESSAGES, betas=["context-management-2025-06-27"],
            context_management=CONTEXT_MANAGEMENT,
        )  # fmt: skip
    assert "context_management" in refused.value.body["error"]["message"]


# --- request-id ------------------------------------------------------------------------------------


def test_every_messages_answer_carries_request_id_equal_to_x_request_id(gateway, catalog, alice, alice_key):
    sdk = client(gateway, alice_key)
    message = sdk.messages.create(model="claude-test", max_tokens=20, messages=MESSAGES)
    assert message._request_id == UsageRecord.objects.get(tenant=alice, status_code=200).request_id
    with pytest.raises(anthropic.BadRequestError) as refused:
        sdk.messages.create(model="claude-test", max_tokens=20, messages=[])
    headers = refused.value.response.headers
    assert headers["request-id"] == headers["x-request-id"] == refused.value.request_id
    assert UsageRecord.objects.get(tenant=alice, status_code=400).request_id == headers["request-id"]
    with pytest.raises(anthropic.AuthenticationError) as unknown_key:
        client(gateway, "tpk_nope").messages.create(model="claude-test", max_tokens=20, messages=MESSAGES)
    assert unknown_key.value.request_id == unknown_key.value.response.headers["x-request-id"]


# --- /v1/models ------------------------------------------------------------------------------------


RELEASED = {
    "claude-test": datetime(2025, 6, 1, 12, tzinfo=UTC),
    "gpt-test": datetime(2025, 1, 1, tzinfo=UTC),
    "azure-gpt-test": datetime(2024, 6, 1, tzinfo=UTC),
}
NEWEST_FIRST = ["claude-test", "gpt-test", "azure-gpt-test"]


@pytest.fixture
def alice_models(catalog, alice):
    alice.allowed_models.set(catalog.values())  # not the default catalog of the data migration
    for name, created in RELEASED.items():
        CatalogModel.objects.filter(name=name).update(created_at=created)
    return catalog


def test_models_in_anthropics_shape_with_every_field(gateway, alice_models, alice_key):
    sdk = client(gateway, alice_key)
    models = list(sdk.models.list())  # the SDK's auto-pagination
    assert [m.id for m in models] == NEWEST_FIRST
    for model in models:
        assert model.type == "model"
        assert model.display_name
        assert model.created_at == RELEASED[model.id]
        assert model.lifecycle == "active"
    claude = sdk.models.retrieve("claude-test")
    assert (claude.id, claude.type, claude.display_name) == ("claude-test", "model", "Claude Test")
    assert claude.created_at == RELEASED["claude-test"]
    assert claude.lifecycle == "active"


def test_anthropic_models_page_with_limit_after_id_and_before_id(gateway, alice_models, alice_key):
    sdk = client(gateway, alice_key)
    first = sdk.models.list(limit=2)
    assert [m.id for m in first.data] == ["claude-test", "gpt-test"]
    assert (first.has_more, first.first_id, first.last_id) == (True, "claude-test", "gpt-test")
    second = first.get_next_page()
    assert [m.id for m in second.data] == ["azure-gpt-test"]
    assert second.has_more is False
    assert [m.id for m in sdk.models.list(limit=2, before_id="azure-gpt-test").data] == ["claude-test", "gpt-test"]
    assert [m.id for m in sdk.models.list(limit=1, before_id="azure-gpt-test").data] == ["gpt-test"]
    assert [m.id for m in sdk.models.list(after_id="claude-test").data] == ["gpt-test", "azure-gpt-test"]
    assert sdk.models.list(lifecycle=["retired"]).data == []
    assert len(sdk.models.list(lifecycle=["active", "deprecated"]).data) == 3
    with pytest.raises(anthropic.BadRequestError) as bad:
        sdk.models.list(limit=0)
    assert "`limit`" in bad.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as bad:
        sdk.models.list(after_id="no-such-model")
    assert "`after_id`" in bad.value.body["error"]["message"]


def test_models_in_openais_shape_with_every_field(gateway, alice_models, alice_key):
    sdk = openai.OpenAI(base_url=f"{gateway}/v1", api_key=alice_key, max_retries=0)
    models = sdk.models.list().data
    assert [m.id for m in models] == ["azure-gpt-test", "claude-test", "gpt-test"]
    for model in models:
        assert model.object == "model"
        assert model.created > 1_700_000_000
        assert model.owned_by in ("openai", "anthropic", "azure")
    gpt = sdk.models.retrieve("gpt-test")
    assert (gpt.id, gpt.object, gpt.owned_by) == ("gpt-test", "model", "openai")
    assert gpt.created == int(RELEASED["gpt-test"].timestamp())


def test_a_model_the_key_may_not_use_is_a_404_in_either_shape(gateway, alice_models, alice):
    narrow = api_key_create(tenant=alice, name="narrow", allowed_models=[alice_models["gpt"]])[1]
    with pytest.raises(openai.NotFoundError) as hidden:
        openai.OpenAI(base_url=f"{gateway}/v1", api_key=narrow, max_retries=0).models.retrieve("claude-test")
    assert hidden.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(base_url=f"{gateway}/v1", api_key=narrow, max_retries=0).models.retrieve("no-such-model")
    with pytest.raises(anthropic.NotFoundError) as hidden:
        client(gateway, narrow).models.retrieve("claude-test")
    assert hidden.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "The model `claude-test` does not exist."},
    }
    assert [m.id for m in client(gateway, narrow).models.list()] == ["gpt-test"]


# --- count_tokens in /metrics -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def observed_gateway(mock_llm, django_db_setup):
    process, url = start_gateway(mock_llm, GATEWAY_AUTH_CACHE_SECONDS="0", GATEWAY_METRICS_TOKEN=METRICS_TOKEN)
    yield url
    stop(process)


def test_count_tokens_shows_in_metrics_without_tokens_or_cost(observed_gateway, catalog, alice, alice_key):
    sdk = client(observed_gateway, alice_key)
    sdk.messages.count_tokens(model="claude-test", messages=MESSAGES)
    sdk.messages.count_tokens(model="gpt-test", messages=MESSAGES)
    with pytest.raises(anthropic.NotFoundError):
        sdk.messages.count_tokens(model="no-such-model", messages=MESSAGES)

    metrics = samples(scrape(observed_gateway))
    counted = {"tenant": "alice", "endpoint": "count_tokens"}
    assert summed(metrics, "gateway_requests_total", status="200", **counted) == 2
    assert summed(metrics, "gateway_requests_total", status="404", **counted) == 1
    assert summed(metrics, "gateway_errors_total", error_type="model_not_found", **counted) == 1
    assert summed(metrics, "gateway_request_duration_seconds_count", **counted) == 3
    in_flight = [v for (name, labels), v in metrics.items() if name == "gateway_requests_in_flight" and
                 ("endpoint", "count_tokens") in labels]  # fmt: skip
    assert in_flight  # counted while in flight (observability.InFlight) ...
    assert sum(in_flight) == 0  # ... and landed
    assert summed(metrics, "gateway_tokens_total", tenant="alice") == 0  # nothing billed
    assert summed(metrics, "gateway_cost_usd_total", tenant="alice") == 0
    assert not UsageRecord.objects.filter(tenant=alice).exists()
