"""`POST /v1/embeddings` end to end: the unchanged openai SDK against a live gateway, the mock provider behind it.

After each request this reads what the request left behind: its usage record (endpoint
`embeddings`, input tokens equal to what the mock reported, the cost exact at the input price),
nothing in flight, the spend counter and the tokens window equal to the records.
"""

import array
import asyncio
import base64
import json
import time
import urllib.request
from decimal import Decimal

import openai
import pytest
from django.db.models import Sum

from billing.models import UsageRecord
from gateway import limits
from gateway.mock import embeddings as mock_embeddings
from gateway.tokenizer import CL100K, O200K, count_tokens
from tenants.models import Deployment
from tenants.services import api_key_create

from .conftest import make_embedding_model, start_gateway, stop

pytestmark = pytest.mark.django_db(transaction=True)

WINDOW_SECONDS = 86400  # a day-long tokens window, so that it can be compared with the records


@pytest.fixture(scope="module")
def gateway_day_window(mock_llm, django_db_setup):
    process, url = start_gateway(
        mock_llm, GATEWAY_AUTH_CACHE_SECONDS="0", GATEWAY_LIMIT_WINDOW_SECONDS=str(WINDOW_SECONDS)
    )
    yield url
    stop(process)


@pytest.fixture
def embedding_catalog(catalog):
    return {
        **catalog,
        "small": make_embedding_model("embed-small", "openai", "text-embedding-3-small"),
        "large": make_embedding_model("embed-large", "openai", "text-embedding-3-large", input_per_1m="0.13"),
        "azure": make_embedding_model("azure-embed", "azure", "text-embedding-3-small"),
    }


@pytest.fixture
def limited(settings, embedding_catalog, alice):
    """alice: two requests at a time, 200k tokens a day-long window, 5 USD a month."""
    settings.GATEWAY_LIMIT_WINDOW_SECONDS = WINDOW_SECONDS
    alice.max_concurrent = 2
    alice.tokens_per_minute = 200_000
    alice.save()
    alice.subscription.monthly_budget = Decimal("5.00")
    alice.subscription.save()
    key, secret = api_key_create(tenant=alice, name="embeddings")
    return alice, key, secret


def sdk(gateway: str, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway}/v1", api_key=secret, max_retries=0, timeout=30)


def read_counters(tenant_id: int) -> limits.LiveUsage:
    async def read():
        try:
            return await limits.live_usage(tenant_id)
        finally:
            await limits.aclose()

    return asyncio.run(read())


def assert_settled(tenant) -> None:
    """Nothing in flight; the month's spend counter and the tokens window equal the records."""
    records = UsageRecord.objects.filter(tenant=tenant)
    usage = read_counters(tenant.id)
    assert usage.in_flight == 0
    assert (usage.month_spend or 0) == (records.aggregate(v=Sum("cost"))["v"] or 0)  # None: never admitted
    tokens = records.aggregate(i=Sum("input_tokens"), o=Sum("output_tokens"))
    # (a day-long window: only a test running across 00:00 UTC could see it turn)
    assert usage.tokens_this_window == (tokens["i"] or 0) + (tokens["o"] or 0)


def upstream_requests(mock_url: str, request_id: str) -> list[dict]:
    """What the mock provider received for one gateway request (by its x-gateway-request-id)."""
    with urllib.request.urlopen(f"{mock_url}/_mock/requests") as response:  # noqa: S310 (our own mock)
        seen = json.loads(response.read())
    return [r for r in seen if r["headers"].get("x-gateway-request-id") == request_id]


def expected_cost(tokens: int, per_1m: str) -> Decimal:
    return Decimal(tokens) * Decimal(per_1m) / Decimal(1_000_000)


def the_record(request_id: str) -> UsageRecord:
    return UsageRecord.objects.get(request_id=request_id)


def test_a_string_is_embedded_and_billed_from_the_providers_usage(gateway_day_window, mock_llm, limited):
    tenant, key, secret = limited
    text = "The quick brown fox jumps over the lazy dog."
    raw = sdk(gateway_day_window, secret).embeddings.with_raw_response.create(
        model="embed-small", input=text, encoding_format="float"
    )
    result = raw.parse()
    request_id = raw.headers["x-request-id"]

    assert result.model == "embed-small"  # the name the client asked for, not the upstream's
    assert len(result.data) == 1
    assert result.data[0].embedding == mock_embeddings.vector("text-embedding-3-small", text, 1536)
    tokens = count_tokens(text, encoding=CL100K)
    assert result.usage.prompt_tokens == result.usage.total_tokens == tokens

    (upstream,) = upstream_requests(mock_llm, request_id)
    assert upstream["path"] == "/v1/embeddings"
    assert upstream["body"] == {"model": "text-embedding-3-small", "input": text, "encoding_format": "float"}

    record = the_record(request_id)
    assert record.endpoint == UsageRecord.Endpoint.EMBEDDINGS
    assert (record.status_code, record.error_type, record.estimated) == (200, "", False)
    assert (record.model, record.provider, record.upstream_model) == ("embed-small", "openai", "text-embedding-3-small")
    assert (record.input_tokens, record.output_tokens) == (tokens, 0)
    assert record.cost == expected_cost(tokens, "0.02")
    assert record.api_key_id == key.id
    assert_settled(tenant)


def test_a_batch_in_the_sdks_default_base64_comes_back_as_the_providers_vectors(gateway_day_window, mock_llm, limited):
    tenant, _key, secret = limited
    texts = ["first document", "second, longer document about embeddings", "ünïcödé and emoji 🚀"]
    # No encoding_format: the SDK asks for base64 and decodes it itself.
    raw = sdk(gateway_day_window, secret).embeddings.with_raw_response.create(model="embed-large", input=texts)
    result = raw.parse()
    request_id = raw.headers["x-request-id"]

    (upstream,) = upstream_requests(mock_llm, request_id)
    assert upstream["body"]["encoding_format"] == "base64"
    assert [d.index for d in result.data] == [0, 1, 2]
    for item, text in zip(result.data, texts, strict=True):
        assert item.embedding == mock_embeddings.vector("text-embedding-3-large", text, 3072)
    tokens = sum(count_tokens(t, encoding=CL100K) for t in texts)
    assert result.usage.prompt_tokens == tokens

    record = the_record(request_id)
    assert (record.input_tokens, record.output_tokens, record.estimated) == (tokens, 0, False)
    assert record.cost == expected_cost(tokens, "0.13")
    assert_settled(tenant)


def test_base64_asked_for_is_passed_through_untouched(gateway_day_window, limited):
    tenant, _key, secret = limited
    texts = ["alpha", "beta"]
    result = sdk(gateway_day_window, secret).embeddings.create(
        model="embed-small", input=texts, encoding_format="base64", dimensions=64
    )
    for item, text in zip(result.data, texts, strict=True):
        assert isinstance(item.embedding, str)  # asked for explicitly: the SDK leaves it as sent
        expected = mock_embeddings.embeddings_response(
            "text-embedding-3-small", [text], dimensions=64, encoding_format="base64"
        )["data"][0]["embedding"]
        assert item.embedding == expected
        decoded = array.array("f", base64.b64decode(item.embedding)).tolist()
        assert decoded == mock_embeddings.vector("text-embedding-3-small", text, 64)
    assert_settled(tenant)


def test_dimensions_are_honoured(gateway_day_window, limited):
    tenant, _key, secret = limited
    result = sdk(gateway_day_window, secret).embeddings.create(model="embed-small", input="short", dimensions=256)
    assert len(result.data[0].embedding) == 256
    norm = sum(v * v for v in result.data[0].embedding) ** 0.5
    assert abs(norm - 1) < 1e-5
    record = UsageRecord.objects.get(tenant=tenant)
    assert record.input_tokens == count_tokens("short", encoding=CL100K)
    assert_settled(tenant)


def test_token_id_inputs_are_billed_as_their_length(gateway_day_window, limited):
    tenant, _key, secret = limited
    client = sdk(gateway_day_window, secret)
    one = client.embeddings.create(model="embed-small", input=[1, 2, 3, 4], encoding_format="float")
    many = client.embeddings.create(model="embed-small", input=[[5, 6], [7, 8, 9]], encoding_format="float")
    assert (one.usage.prompt_tokens, len(one.data)) == (4, 1)
    assert (many.usage.prompt_tokens, len(many.data)) == (5, 2)
    records = UsageRecord.objects.filter(tenant=tenant).order_by("input_tokens")
    assert [r.input_tokens for r in records] == [4, 5]
    assert [r.cost for r in records] == [expected_cost(4, "0.02"), expected_cost(5, "0.02")]
    assert_settled(tenant)


def test_an_azure_deployment_serves_a_catalog_embedding_model(gateway_day_window, mock_llm, limited):
    tenant, _key, secret = limited
    raw = sdk(gateway_day_window, secret).embeddings.with_raw_response.create(
        model="azure-embed", input=["one", "two"], encoding_format="float"
    )
    result = raw.parse()
    request_id = raw.headers["x-request-id"]
    (upstream,) = upstream_requests(mock_llm, request_id)
    assert upstream["path"] == "/openai/deployments/text-embedding-3-small/embeddings"
    assert upstream["query"]["api-version"]
    assert result.model == "azure-embed"
    tokens = count_tokens("one", encoding=CL100K) + count_tokens("two", encoding=CL100K)
    assert result.usage.prompt_tokens == tokens
    record = the_record(request_id)
    assert (record.provider, record.input_tokens, record.cost) == ("azure", tokens, expected_cost(tokens, "0.02"))
    assert_settled(tenant)


def test_an_anthropic_deployment_is_skipped_for_the_next_one(gateway_day_window, mock_llm, limited):
    """Routing falls back as for chat: Anthropic serves no embeddings, the OpenAI deployment does."""
    tenant, _key, secret = limited
    model = make_embedding_model("embed-routed", "openai", "text-embedding-3-small")
    model.deployments.update(priority=1)
    Deployment.objects.create(model=model, provider="anthropic", upstream="claude-haiku-4-5", priority=0)
    raw = sdk(gateway_day_window, secret).embeddings.with_raw_response.create(
        model="embed-routed", input="routed", encoding_format="float"
    )
    raw.parse()
    request_id = raw.headers["x-request-id"]
    assert [r["path"] for r in upstream_requests(mock_llm, request_id)] == ["/v1/embeddings"]
    record = the_record(request_id)
    assert (record.status_code, record.provider) == (200, "openai")
    assert record.input_tokens == count_tokens("routed", encoding=CL100K)
    assert_settled(tenant)


def test_a_model_only_on_anthropic_cannot_embed(gateway_day_window, limited):
    tenant, _key, secret = limited
    make_embedding_model("embed-claude", "anthropic", "claude-haiku-4-5")
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(gateway_day_window, secret).embeddings.create(model="embed-claude", input="hello")
    assert caught.value.body["param"] == "model"
    assert caught.value.body["code"] == "unsupported_endpoint"
    record = UsageRecord.objects.get(tenant=tenant)
    assert (record.status_code, record.cost, record.input_tokens) == (400, 0, 0)
    assert_settled(tenant)


def test_an_upstream_failure_is_recorded_and_gives_everything_back(gateway_day_window, limited):
    tenant, _key, secret = limited
    with pytest.raises(openai.APIStatusError) as caught:
        sdk(gateway_day_window, secret).embeddings.create(model="embed-small", input="[[mock:status=500]] hello")
    assert caught.value.status_code == 502
    record = UsageRecord.objects.get(tenant=tenant)
    assert (record.endpoint, record.status_code, record.cost) == ("embeddings", 502, 0)
    assert_settled(tenant)


def test_a_chat_model_is_refused_for_embeddings(gateway_day_window, limited):
    tenant, _key, secret = limited
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(gateway_day_window, secret).embeddings.create(model="gpt-test", input="hello")
    assert caught.value.body["param"] == "model"
    assert "chat model" in caught.value.body["message"]
    record = UsageRecord.objects.get(tenant=tenant)
    assert (record.endpoint, record.status_code, record.error_type) == ("embeddings", 400, "model_not_supported")
    assert_settled(tenant)


def test_an_embedding_model_is_refused_for_chat_and_messages(gateway_day_window, limited):
    import anthropic

    tenant, _key, secret = limited
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(gateway_day_window, secret).chat.completions.create(
            model="embed-small", messages=[{"role": "user", "content": "hello"}]
        )
    assert caught.value.body["param"] == "model"
    assert "embedding model" in caught.value.body["message"]
    client = anthropic.Anthropic(base_url=gateway_day_window, api_key=secret, max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(model="embed-small", max_tokens=10, messages=[{"role": "user", "content": "hello"}])
    assert refused.value.body["type"] == "error"
    assert "`embed-small` is an embedding model" in refused.value.body["error"]["message"]
    assert sorted(UsageRecord.objects.filter(tenant=tenant).values_list("endpoint", "status_code")) == [
        ("chat", 400),
        ("messages", 400),
    ]
    assert_settled(tenant)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": ["ok", ""]}, "input"),
        ({"input": [[1], []]}, "input"),
        ({"input": {"text": "x"}}, "input"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"input": "x", "user": 5}, "user"),
        ({}, "input"),
    ],
)
def test_a_bad_body_is_a_400_naming_the_field(gateway_day_window, limited, body, param):
    tenant, _key, secret = limited
    client = sdk(gateway_day_window, secret)
    with pytest.raises(openai.BadRequestError) as caught:
        client.post("/embeddings", body={"model": "embed-small", **body}, cast_to=object)
    assert caught.value.body["param"] == param
    assert f"`{param}`" in caught.value.body["message"]
    assert UsageRecord.objects.get(tenant=tenant).status_code == 400


def test_the_tokens_per_minute_limit_counts_the_input(gateway_day_window, limited):
    tenant, _key, secret = limited
    tenant.tokens_per_minute = 30
    tenant.save()
    client = sdk(gateway_day_window, secret)
    text = "one two three four five six seven eight nine ten eleven twelve"  # 12 tokens in cl100k
    assert count_tokens(text, encoding=CL100K) == count_tokens(text, encoding=O200K) == 12
    client.embeddings.create(model="embed-small", input=text)
    client.embeddings.create(model="embed-small", input=text)
    with pytest.raises(openai.RateLimitError) as caught:
        client.embeddings.create(model="embed-small", input=text)  # 36 > 30
    assert caught.value.response.headers["retry-after"]
    with pytest.raises(openai.RateLimitError) as too_big:
        client.embeddings.create(model="embed-small", input=" ".join([text] * 3))  # more than any window holds
    assert too_big.value.body["code"] == "rate_limit_tokens"
    statuses = sorted(UsageRecord.objects.filter(tenant=tenant).values_list("status_code", flat=True))
    assert statuses == [200, 200, 429, 429]
    assert_settled(tenant)


def test_an_exhausted_budget_refuses_with_402(gateway_day_window, limited):
    tenant, _key, secret = limited
    make_embedding_model("embed-pricey", "openai", "text-embedding-3-small", input_per_1m="1000.00")
    tenant.subscription.monthly_budget = Decimal("0.01")
    tenant.subscription.save()
    client = sdk(gateway_day_window, secret)
    client.embeddings.create(model="embed-pricey", input="three tokens here")  # 3 tokens: 0.003 USD
    with pytest.raises(openai.APIStatusError) as caught:
        client.embeddings.create(model="embed-pricey", input="a longer text " * 4)  # 0.009 more: over 0.01
    assert caught.value.status_code == 402
    records = UsageRecord.objects.filter(tenant=tenant).order_by("created_at")
    assert [r.status_code for r in records] == [200, 402]
    assert records[0].cost == expected_cost(count_tokens("three tokens here", encoding=CL100K), "1000.00")
    assert_settled(tenant)


def test_usage_breaks_down_by_endpoint(gateway_day_window, limited):
    tenant, _key, secret = limited
    client = sdk(gateway_day_window, secret)
    client.embeddings.create(model="embed-small", input="hello")
    client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hello"}], max_tokens=5)
    today = time.strftime("%Y-%m-%d", time.gmtime())
    usage = client.get(f"/usage?start={today}&end={today}", cast_to=object)
    by_endpoint = {row["endpoint"]: row for row in usage["by_endpoint"]}
    assert set(by_endpoint) == {"chat", "embeddings"}
    embedding = UsageRecord.objects.get(tenant=tenant, endpoint="embeddings")
    assert by_endpoint["embeddings"]["requests"] == 1
    assert Decimal(by_endpoint["embeddings"]["cost"]) == embedding.cost


def test_a_client_that_hangs_up_is_billed_the_providers_usage_and_gives_everything_back(gateway_day_window, limited):
    """The provider answers (and bills) after the client left: recorded as 499 with its real numbers."""
    tenant, _key, secret = limited
    text = "[[mock:latency_ms=1500]] a slow answer"
    impatient = sdk(gateway_day_window, secret).with_options(timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        impatient.embeddings.create(model="embed-small", input=text)
    deadline = time.monotonic() + 10
    while not UsageRecord.objects.filter(tenant=tenant).exists():
        assert time.monotonic() < deadline, "no usage record for the abandoned request"
        time.sleep(0.05)
    record = UsageRecord.objects.get(tenant=tenant)
    tokens = count_tokens(text, encoding=CL100K)
    assert (record.status_code, record.error_type, record.estimated) == (499, "client_disconnected", False)
    assert (record.input_tokens, record.cost) == (tokens, expected_cost(tokens, "0.02"))
    # The record is written before the admission is settled: give the settlement its moment.
    while read_counters(tenant.id).in_flight:
        assert time.monotonic() < deadline, "the abandoned request still holds its slot"
        time.sleep(0.05)
    assert_settled(tenant)
