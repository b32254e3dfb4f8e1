"""Fallback models, streams that are never retried, and the request's deadline, against a live
gateway process (issue 13 part 5, docs/routing.md#retries-and-fallbacks).

Two mock providers on their own ports: one answering 500 to every model request (both
deployments of an OpenAI-family model), one healthy (the Claude model it falls back to, and the
models of the other cases). The unchanged `openai` SDK is the client; afterwards the test reads
what each request left: its usage record (model that answered, model asked, price, exact cost),
what each mock received, the tenant's and key's counters (nothing in flight, spend equal to the
records), /metrics.
"""

import json
import time
import urllib.request
from decimal import Decimal

import anthropic
import httpx2
import openai
import pytest

from billing.models import ModelPrice, UsageRecord
from tenants.models import CatalogModel, Deployment
from tenants.services import api_key_create

from .conftest import PRICE_FROM, make_tenant, start_gateway, stop
from .test_request_lifecycle import WINDOW_SECONDS, settled
from .test_routing_live import start_mock

pytestmark = pytest.mark.django_db(transaction=True)

METRICS_TOKEN = "fallback-metrics-token"
DEADLINE_SECONDS = 2


@pytest.fixture(scope="module")
def mocks():
    started = [start_mock("--fault-rate", "1", "--fault-status", "500"), start_mock()]
    try:
        yield {name: url for name, (_, url) in zip(("failing", "healthy"), started, strict=True)}
    finally:
        for process, _ in started:
            stop(process)


@pytest.fixture(scope="module")
def gateway(mock_llm, mocks, django_db_setup):
    process, url = start_gateway(
        mock_llm,
        GATEWAY_AUTH_CACHE_SECONDS="0",
        GATEWAY_LIMIT_WINDOW_SECONDS=str(WINDOW_SECONDS),
        GATEWAY_RETRIES="1",
        GATEWAY_RETRY_BACKOFF_SECONDS="0.05",
        GATEWAY_REQUEST_DEADLINE_SECONDS=str(DEADLINE_SECONDS),
        GATEWAY_METRICS_TOKEN=METRICS_TOKEN,
    )
    try:
        yield url
    finally:
        stop(process)


def make_model(name: str, provider: str, price: tuple[str, str], deployments: list[dict], fallbacks=()):
    model = CatalogModel.objects.create(name=name, provider=provider, fallbacks=list(fallbacks))
    ModelPrice.objects.create(
        model=model, effective_from=PRICE_FROM, input_per_1m=Decimal(price[0]), output_per_1m=Decimal(price[1])
    )
    return [Deployment.objects.create(model=model, provider=provider, **fields) for fields in deployments]


@pytest.fixture
def world(transactional_db, settings, gateway, mocks):
    """An OpenAI model whose two deployments both fail, falling back to a pricier Claude model;
    a tenant with one request at a time, a tokens window and a budget, a key with a budget of its own."""
    settings.GATEWAY_LIMIT_WINDOW_SECONDS = WINDOW_SECONDS  # as the gateway's, to read its tokens window
    failing = make_model(
        "gpt-primary",
        "openai",
        ("0.15", "0.60"),
        [
            {"upstream": "gpt-p-a", "base_url": f"{mocks['failing']}/v1", "priority": 0},
            {"upstream": "gpt-p-b", "base_url": f"{mocks['failing']}/v1", "priority": 1},
        ],
        fallbacks=["claude-backup"],
    )
    (backup,) = make_model(
        "claude-backup", "anthropic", ("1.00", "5.00"), [{"upstream": "claude-b", "base_url": mocks["healthy"]}]
    )
    tenant = make_tenant("falls", max_concurrent=1, tokens_per_minute=200_000)
    tenant.subscription.monthly_budget = Decimal("5.00")
    tenant.subscription.save()
    key, secret = api_key_create(tenant=tenant, name="fallback")
    key.monthly_budget = Decimal("2.00")
    key.save()
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=secret, max_retries=0, timeout=30)
    return {"tenant": tenant, "key": key, "client": client, "failing": failing, "backup": backup}


def received(mock_url: str, upstream: str) -> int:
    seen = json.loads(urllib.request.urlopen(f"{mock_url}/_mock/requests").read())
    return sum(1 for r in seen if isinstance(r.get("body"), dict) and r["body"].get("model") == upstream)


def wait_settled(world, *, records: int) -> None:
    deadline = time.monotonic() + 10
    window = int(time.time()) // WINDOW_SECONDS
    while True:
        ok, detail = settled(world["tenant"], world["key"], window=window)
        count = UsageRecord.objects.filter(tenant=world["tenant"]).count()
        if ok and count == records:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{count} records (want {records}); counters {detail}")
        time.sleep(0.05)


def chat(client, model: str, text: str = "hello", **options):
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], max_tokens=30, **options
    )


def test_every_deployment_failing_is_answered_by_the_fallback_at_its_price(world, mocks, gateway):
    before = {name: received(mocks["failing"], name) for name in ("gpt-p-a", "gpt-p-b")}
    backup_before = received(mocks["healthy"], "claude-b")

    raw = chat(world["client"], "gpt-primary")
    answer = raw.parse()
    streamed = chat(world["client"], "gpt-primary", stream=True, stream_options={"include_usage": True})
    chunks = list(streamed.parse())

    # Both answered 200 through the OpenAI SDK, translated from Claude's format; the header names the
    # model and deployment that answered (never a URL or key), the body the model asked for.
    assert answer.model == "gpt-primary"
    assert answer.choices[0].message.content
    for headers in (raw.headers, streamed.headers):
        assert headers["x-gateway-model"] == "claude-backup"
        assert headers["x-gateway-deployment"] == str(world["backup"].id)
    assert chunks[-1].usage is not None
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # Each request tried each failing deployment once (the fallback answered: no retry round), then
    # the Claude deployment once.
    assert {name: received(mocks["failing"], name) - before[name] for name in before} == {"gpt-p-a": 2, "gpt-p-b": 2}
    assert received(mocks["healthy"], "claude-b") - backup_before == 2

    wait_settled(world, records=2)
    records = list(UsageRecord.objects.filter(tenant=world["tenant"]).order_by("created_at"))
    price = ModelPrice.objects.get(model__name="claude-backup")
    for record in records:
        assert (record.model, record.requested_model, record.provider, record.upstream_model) == (
            "claude-backup",
            "gpt-primary",
            "anthropic",
            "claude-b",
        )
        assert (record.status_code, record.error_type, record.price_id, record.estimated) == (200, "", price.id, False)
        assert record.cost == (record.input_tokens * Decimal("1.00") + record.output_tokens * Decimal("5.00")) / 10**6
        assert record.cost > 0
    assert [r.streamed for r in records] == [False, True]
    assert (records[0].input_tokens, records[0].output_tokens) == (
        answer.usage.prompt_tokens,
        answer.usage.completion_tokens,
    )

    metrics = httpx2.get(f"{gateway}/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10).text
    assert 'gateway_fallbacks_total{fallback="claude-backup",model="gpt-primary"} 2.0' in metrics
    for deployment in world["failing"]:
        labels = f'deployment="{deployment.id}",model="gpt-primary",outcome="server",provider="openai"'
        assert f"gateway_upstream_attempts_total{{{labels}}} 2.0" in metrics


def test_the_messages_endpoint_names_the_fallback_too(world, gateway):
    client = anthropic.Anthropic(base_url=gateway, api_key=world["client"].api_key, max_retries=0, timeout=30)
    messages = [{"role": "user", "content": "hello"}]

    raw = client.messages.with_raw_response.create(model="gpt-primary", max_tokens=30, messages=messages)
    with client.messages.with_streaming_response.create(
        model="gpt-primary", max_tokens=30, messages=messages, stream=True
    ) as streamed:
        events = [line for line in streamed.iter_lines() if line.startswith("event:")]

    assert raw.parse().model == "gpt-primary"
    assert events[-1] == "event: message_stop"
    for headers in (raw.headers, streamed.headers):
        assert (headers["x-gateway-model"], headers["x-gateway-deployment"]) == (
            "claude-backup",
            str(world["backup"].id),
        )
    wait_settled(world, records=2)
    records = UsageRecord.objects.filter(tenant=world["tenant"])
    assert {(r.endpoint, r.model, r.requested_model, r.status_code) for r in records} == {
        ("messages", "claude-backup", "gpt-primary", 200)
    }


def test_a_stream_broken_after_its_first_byte_is_not_retried(world, mocks):
    (streamy,) = make_model(
        "gpt-streamy",
        "openai",
        ("0.15", "0.60"),
        [{"upstream": "gpt-s", "base_url": f"{mocks['healthy']}/v1"}],
        fallbacks=["claude-backup"],
    )
    before = received(mocks["healthy"], "gpt-s"), received(mocks["healthy"], "claude-b")

    raw = chat(world["client"], "gpt-streamy", "[[mock:break_after=3]] [[mock:words=40]] hi", stream=True)
    assert raw.headers["x-gateway-model"] == "gpt-streamy"
    assert raw.headers["x-gateway-deployment"] == str(streamy.id)
    seen = []

    def read_all() -> None:
        for chunk in raw.parse():
            seen.append(chunk)

    with pytest.raises(openai.APIError):
        read_all()
    assert seen  # the first bytes reached the client before the upstream broke off

    # One upstream call: neither the same deployment again nor the fallback.
    assert (received(mocks["healthy"], "gpt-s"), received(mocks["healthy"], "claude-b")) == (
        before[0] + 1,
        before[1],
    )
    wait_settled(world, records=1)
    record = UsageRecord.objects.get(tenant=world["tenant"])
    assert (record.model, record.requested_model, record.error_type, record.streamed) == (
        "gpt-streamy",
        "",
        "upstream_stream_error",
        True,
    )


def test_past_the_deadline_the_caller_gets_the_last_upstream_error_not_a_hang(world, mocks):
    make_model("gpt-slow", "openai", ("0.15", "0.60"), [{"upstream": "gpt-slow", "base_url": f"{mocks['healthy']}/v1"}])

    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as refused:
        chat(world["client"], "gpt-slow", "[[mock:latency_ms=6000]] hello")
    took = time.monotonic() - started

    assert DEADLINE_SECONDS - 0.1 <= took < DEADLINE_SECONDS + 1.5
    assert refused.value.status_code == 504
    assert refused.value.body["code"] == "upstream_timeout"
    wait_settled(world, records=1)
    record = UsageRecord.objects.get(tenant=world["tenant"])
    assert (record.model, record.status_code, record.error_type) == ("gpt-slow", 504, "upstream_timeout")
