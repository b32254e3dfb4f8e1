"""The whole path, as a tenant's app sees it: the unchanged openai and anthropic SDKs against a
live gateway process, the project's mock provider as every upstream, and the usage record
that must come out of each call with the upstream's exact tokens and cost = tokens × price.
"""

from decimal import Decimal

import anthropic
import httpx2 as httpx
import openai
import pytest

from billing.models import UsageRecord
from gateway.mock.server import billing_encoding
from gateway.tokenizer import count_message_tokens, count_tokens

pytestmark = pytest.mark.django_db(transaction=True)

MILLION = Decimal(1_000_000)
PRICES = {  # the `catalog` fixture's prices: input, cached input, cache write, output
    "gpt-test": (Decimal("0.15"), Decimal("0.075"), Decimal("0.15"), Decimal("0.60")),
    "claude-test": (Decimal("1.00"), Decimal("0.10"), Decimal("1.25"), Decimal("5.00")),
    "azure-gpt-test": (Decimal("2.50"), Decimal("2.50"), Decimal("2.50"), Decimal("10.00")),
}
UPSTREAM = {
    "gpt-test": "gpt-4o-mini-2024-07-18",
    "claude-test": "claude-haiku-4-5",
    "azure-gpt-test": "gpt4o-prod-deployment",
}
MODELS = list(PRICES)


def expected_cost(model: str, *, input: int, cached: int = 0, write: int = 0, output: int = 0) -> Decimal:
    price_in, price_cached, price_write, price_out = PRICES[model]
    return (
        (input - cached - write) * price_in + cached * price_cached + write * price_write + output * price_out
    ) / MILLION


def openai_client(gateway, key):
    return openai.OpenAI(base_url=f"{gateway}/v1", api_key=key, max_retries=0)


def anthropic_client(gateway, key):
    return anthropic.Anthropic(base_url=gateway, api_key=key, max_retries=0)


def record_for(request_id: str) -> UsageRecord:
    return UsageRecord.objects.get(request_id=request_id)


def last_upstream_request(mock_llm) -> dict:
    return httpx.get(f"{mock_llm}/_mock/requests").json()[-1]


def upstream_prompt_tokens(received: dict) -> int:
    """What the mock counts for the prompt it received, computed here independently."""
    body = received["body"]
    encoding = billing_encoding(body["model"])
    total = count_message_tokens(body["messages"], encoding=encoding)
    system = body.get("system")
    if isinstance(system, str):
        total += count_tokens(system, encoding=encoding)
    elif isinstance(system, list):
        total += sum(count_tokens(block.get("text", ""), encoding=encoding) for block in system)
    return total


def billed_output(model: str, text: str) -> int:
    """The reply's tokens as the mock bills them: in the encoding of the catalog model's upstream."""
    return count_tokens(text, encoding=billing_encoding(UPSTREAM[model]))


@pytest.mark.parametrize("model", MODELS)
def test_chat_completion_json_is_answered_and_metered_exactly(gateway, mock_llm, catalog, alice_key, model):
    client = openai_client(gateway, alice_key)
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello to Alice"}],
        max_tokens=50,
    )
    completion = raw.parse()
    assert completion.model == model
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"

    received = last_upstream_request(mock_llm)
    assert received["body"]["model"] == UPSTREAM[model]
    usage = completion.usage
    assert usage.prompt_tokens == upstream_prompt_tokens(received)
    assert usage.completion_tokens == billed_output(model, completion.choices[0].message.content)

    rec = record_for(raw.headers["x-request-id"])
    assert (rec.model, rec.endpoint, rec.status_code, rec.error_type) == (model, "chat", 200, "")
    assert (rec.input_tokens, rec.output_tokens) == (usage.prompt_tokens, usage.completion_tokens)
    assert rec.cost == expected_cost(model, input=rec.input_tokens, output=rec.output_tokens)
    assert rec.cost > 0
    assert not rec.estimated
    assert not rec.streamed


@pytest.mark.parametrize("model", MODELS)
def test_messages_json_is_answered_and_metered_exactly(gateway, mock_llm, catalog, alice_key, model):
    client = anthropic_client(gateway, alice_key)
    raw = client.messages.with_raw_response.create(
        model=model,
        system="Be brief.",
        messages=[{"role": "user", "content": "Say hello to Bob"}],
        max_tokens=64,
    )
    message = raw.parse()
    assert message.type == "message"
    assert message.model == model
    assert message.content[0].type == "text"
    assert message.content[0].text
    assert message.stop_reason == "end_turn"

    received = last_upstream_request(mock_llm)
    assert received["body"]["model"] == UPSTREAM[model]
    assert message.usage.input_tokens == upstream_prompt_tokens(received)
    assert message.usage.output_tokens == billed_output(model, message.content[0].text)

    rec = record_for(raw.headers["x-request-id"])
    assert (rec.endpoint, rec.status_code) == ("messages", 200)
    assert (rec.input_tokens, rec.output_tokens) == (message.usage.input_tokens, message.usage.output_tokens)
    assert rec.cost == expected_cost(model, input=rec.input_tokens, output=rec.output_tokens)


@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize("model", MODELS)
def test_chat_stream_sends_usage_chunk_only_when_asked(gateway, catalog, alice_key, model, include_usage):
    client = openai_client(gateway, alice_key)
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "Stream a greeting please"}], stream=True, **extra
    )
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert text
    assert all(c.model == model for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]

    rec = record_for(raw.headers["x-request-id"])
    assert (rec.streamed, rec.estimated, rec.status_code) == (True, False, 200)
    assert rec.output_tokens == billed_output(model, text)
    assert rec.cost == expected_cost(model, input=rec.input_tokens, output=rec.output_tokens)
    if include_usage:
        assert len(usage_chunks) == 1
        assert usage_chunks[0].choices == []
        assert chunks[-1] is usage_chunks[0]
        assert (usage_chunks[0].usage.prompt_tokens, usage_chunks[0].usage.completion_tokens) == (
            rec.input_tokens,
            rec.output_tokens,
        )
    else:
        assert usage_chunks == []
        assert all(c.choices for c in chunks)


@pytest.mark.parametrize("model", MODELS)
def test_messages_stream_is_answered_and_metered(gateway, catalog, alice_key, model):
    client = anthropic_client(gateway, alice_key)
    raw = client.messages.with_raw_response.create(
        model=model, max_tokens=100, messages=[{"role": "user", "content": "Stream me a greeting"}], stream=True
    )
    events = list(raw.parse())
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start"
    assert kinds[-1] == "message_stop"
    assert "content_block_delta" in kinds
    assert "message_delta" in kinds
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta")
    final = next(e for e in events if e.type == "message_delta")
    assert final.delta.stop_reason == "end_turn"
    assert events[0].message.model == model

    rec = record_for(raw.headers["x-request-id"])
    assert (rec.streamed, rec.estimated) == (True, False)
    assert rec.output_tokens == billed_output(model, text) == final.usage.output_tokens
    assert rec.cost == expected_cost(model, input=rec.input_tokens, output=rec.output_tokens)


def test_cached_openai_tokens_are_billed_at_the_cached_price(gateway, catalog, alice_key):
    client = openai_client(gateway, alice_key)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "[[mock:cached=8]] long shared prefix here"}]
    )
    completion = raw.parse()
    assert completion.usage.prompt_tokens_details.cached_tokens == 8
    rec = record_for(raw.headers["x-request-id"])
    assert rec.cached_input_tokens == 8
    assert rec.input_tokens == completion.usage.prompt_tokens
    assert rec.cost == expected_cost("gpt-test", input=rec.input_tokens, cached=8, output=rec.output_tokens)


def test_anthropic_cache_reads_and_writes_are_priced_apart(gateway, catalog, alice_key):
    client = anthropic_client(gateway, alice_key)
    raw = client.messages.with_raw_response.create(
        model="claude-test",
        max_tokens=50,
        messages=[{"role": "user", "content": "[[mock:cached=5]] [[mock:cache_write=3]] cache this prompt please"}],
    )
    message = raw.parse()
    assert message.usage.cache_read_input_tokens == 5
    assert message.usage.cache_creation_input_tokens == 3
    rec = record_for(raw.headers["x-request-id"])
    # Anthropic's input_tokens excludes the cache; ours is the whole prompt.
    assert rec.input_tokens == message.usage.input_tokens + 5 + 3
    assert (rec.cached_input_tokens, rec.cache_write_tokens) == (5, 3)
    assert rec.cost == expected_cost("claude-test", input=rec.input_tokens, cached=5, write=3, output=rec.output_tokens)


def test_a_broken_stream_is_recorded_as_estimated(gateway, catalog, alice_key):
    client = openai_client(gateway, alice_key)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-test",
        messages=[{"role": "user", "content": "[[mock:words=30]] [[mock:break_after=4]] go"}],
        stream=True,
    )
    received = []

    def consume():
        received.extend(raw.parse())

    with pytest.raises(openai.APIError):
        consume()
    rec = record_for(raw.headers["x-request-id"])
    assert rec.estimated
    assert rec.error_type == "upstream_stream_error"
    text = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
    assert rec.output_tokens == count_tokens(text) > 0
    assert rec.cost == expected_cost("gpt-test", input=rec.input_tokens, output=rec.output_tokens)


def test_bad_key_is_401_in_each_wire_format(gateway, catalog):
    with pytest.raises(openai.AuthenticationError) as openai_error:
        openai_client(gateway, "tpk_not-a-real-key").chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}]
        )
    assert openai_error.value.status_code == 401
    assert openai_error.value.body["code"] == "invalid_api_key"
    with pytest.raises(anthropic.AuthenticationError) as anthropic_error:
        anthropic_client(gateway, "ta_unknown").messages.create(
            model="claude-test", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert anthropic_error.value.body["type"] == "error"
    assert anthropic_error.value.body["error"]["type"] == "authentication_error"
    assert UsageRecord.objects.count() == 0


def test_unknown_model_is_404_and_recorded_with_zero_cost(gateway, catalog, alice, alice_key):
    with pytest.raises(openai.NotFoundError) as error:
        openai_client(gateway, alice_key).chat.completions.create(
            model="gpt-99", messages=[{"role": "user", "content": "hi"}]
        )
    assert error.value.body["code"] == "model_not_found"
    rec = UsageRecord.objects.get(tenant=alice)
    assert (rec.status_code, rec.error_type, rec.model) == (404, "model_not_found", "gpt-99")
    assert (rec.input_tokens, rec.output_tokens, rec.cost) == (0, 0, Decimal(0))


def test_malformed_bodies_are_400_in_each_wire_format(gateway, catalog, alice, alice_key):
    headers = {"authorization": f"Bearer {alice_key}", "content-type": "application/json"}
    response = httpx.post(f"{gateway}/v1/chat/completions", content=b"{not json", headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    response = httpx.post(f"{gateway}/v1/chat/completions", json={"model": "gpt-test"}, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages"
    response = httpx.post(
        f"{gateway}/v1/messages",
        json={"model": "claude-test", "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-api-key": alice_key},
    )
    assert response.status_code == 400
    assert response.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "`max_tokens` is required."},
    }
    assert response.headers["x-request-id"]
    statuses = sorted(UsageRecord.objects.filter(tenant=alice).values_list("status_code", "error_type"))
    assert statuses == [(400, "invalid_json"), (400, "invalid_request"), (400, "invalid_request")]


def test_an_upstream_429_is_not_our_rate_limit(gateway, catalog, alice, alice_key):
    with pytest.raises(openai.RateLimitError) as error:
        openai_client(gateway, alice_key).chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "[[mock:status=429]] hi"}]
        )
    assert error.value.body["code"] == "upstream_rate_limit"
    assert "not your own rate limit" in error.value.body["message"]
    rec = UsageRecord.objects.get(tenant=alice)
    assert (rec.status_code, rec.error_type, rec.cost) == (429, "upstream_rate_limit", Decimal(0))


def test_an_upstream_overload_is_503_in_anthropic_format(gateway, catalog, alice_key):
    with pytest.raises(anthropic.APIStatusError) as error:
        anthropic_client(gateway, alice_key).messages.create(
            model="claude-test", max_tokens=10, messages=[{"role": "user", "content": "[[mock:status=529]] hi"}]
        )
    assert error.value.status_code == 503
    assert error.value.body["error"]["type"] == "overloaded_error"


def test_azure_content_filter_is_a_400_with_its_code(gateway, catalog, alice_key):
    with pytest.raises(openai.BadRequestError) as error:
        openai_client(gateway, alice_key).chat.completions.create(
            model="azure-gpt-test", messages=[{"role": "user", "content": "[[mock:content_filter]] hi"}]
        )
    assert error.value.body["code"] == "content_filter"


def test_models_lists_only_what_the_tenant_may_use(gateway, catalog, alice, alice_key):
    alice.allowed_models.set([catalog["gpt"], catalog["claude"]])
    models = openai_client(gateway, alice_key).models.list()
    assert sorted(m.id for m in models.data) == ["claude-test", "gpt-test"]
    with pytest.raises(openai.PermissionDeniedError):
        openai_client(gateway, alice_key).chat.completions.create(
            model="azure-gpt-test", messages=[{"role": "user", "content": "hi"}]
        )


def test_usage_endpoint_sums_this_tenant_only(gateway, catalog, alice_key, bob_key):
    openai_client(gateway, alice_key).chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "one"}]
    )
    openai_client(gateway, bob_key).chat.completions.create(
        model="claude-test", messages=[{"role": "user", "content": "two"}]
    )
    today = UsageRecord.objects.first().created_at.date().isoformat()
    response = httpx.get(
        f"{gateway}/v1/usage", params={"start": today, "end": today}, headers={"authorization": f"Bearer {alice_key}"}
    )
    assert response.status_code == 200
    body = response.json()
    rec = UsageRecord.objects.get(tenant__slug="alice")
    assert body["tenant"] == "alice"
    assert body["totals"]["requests"] == 1
    assert Decimal(body["totals"]["cost"]) == rec.cost
    assert [m["model"] for m in body["by_model"]] == ["gpt-test"]
    bad = httpx.get(
        f"{gateway}/v1/usage", params={"start": "yesterday"}, headers={"authorization": f"Bearer {alice_key}"}
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "start"


def test_health_and_readiness(gateway):
    assert httpx.get(f"{gateway}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway}/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "redis": "ok"}
