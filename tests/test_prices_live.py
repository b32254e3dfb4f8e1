"""Prices that match what providers charge, end to end: the unchanged SDKs against a live gateway
and the mock provider, and the usage record each call leaves behind.

- Cache writes by lifetime: Anthropic reports `usage.cache_creation` split into 5-minute and
  1-hour writes (the mock splits as the request's cache_control ttls ask); the record keeps the
  1-hour part and bills it at the 1-hour price, in JSON and streams, and behind an OpenAI client
  (whose usage shape has no 1-hour field).
- Long-context tiers: a prompt above the (test-sized) threshold is billed wholly at the tier.
"""

from decimal import Decimal

import anthropic
import openai
import pytest

from billing.models import PriceTier, UsageRecord
from tests.conftest import make_model

pytestmark = pytest.mark.django_db(transaction=True)

MILLION = Decimal(1_000_000)
D = Decimal
BASE = {"input": D("3.00"), "cached": D("0.30"), "write": D("3.75"), "write_1h": D("6.00"), "output": D("15.00")}
TIER = {"input": D("6.00"), "cached": D("0.60"), "write": D("7.50"), "write_1h": D("12.00"), "output": D("22.50")}
THRESHOLD = 400  # input tokens, cache included: small enough for a test prompt to pass it


@pytest.fixture
def sonnet(catalog):
    """A Claude model priced like the 1M-context Sonnet: 1-hour writes at 2x input, and a tier."""
    model = make_model(
        "claude-long",
        "anthropic",
        "claude-sonnet-4-5",
        input_per_1m="3.00",
        output_per_1m="15.00",
        cached="0.30",
        cache_write="3.75",
    )
    price = model.prices.get()
    price.cache_write_1h_per_1m = BASE["write_1h"]
    price.save()
    tier = PriceTier.objects.create(
        price=price,
        above_input_tokens=THRESHOLD,
        input_per_1m=TIER["input"],
        output_per_1m=TIER["output"],
        cached_input_per_1m=TIER["cached"],
        cache_write_per_1m=TIER["write"],
        cache_write_1h_per_1m=TIER["write_1h"],
    )
    return {"model": model, "price": price, "tier": tier}


def cost(rates: dict, rec: UsageRecord) -> Decimal:
    """The record's tokens at these rates, by hand."""
    uncached = rec.input_tokens - rec.cached_input_tokens - rec.cache_write_tokens
    return (
        uncached * rates["input"]
        + rec.cached_input_tokens * rates["cached"]
        + (rec.cache_write_tokens - rec.cache_write_1h_tokens) * rates["write"]
        + rec.cache_write_1h_tokens * rates["write_1h"]
        + rec.output_tokens * rates["output"]
    ) / MILLION


def one_hour(text: str) -> dict:
    return {"type": "text", "text": text, "cache_control": {"type": "ephemeral", "ttl": "1h"}}


def five_minutes(text: str) -> dict:
    return {"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}


DIRECTIVES = "[[mock:cached=10]] [[mock:cache_write=30]] [[mock:cache_write_1h=20]]"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_anthropic_one_hour_and_five_minute_writes_are_recorded_apart_and_billed_exactly(
    gateway, sonnet, alice_key, stream
):
    client = anthropic.Anthropic(base_url=gateway, api_key=alice_key, max_retries=0)
    request = {
        "model": "claude-long",
        "max_tokens": 30,
        "system": [one_hour("You are a careful assistant. Keep this for an hour.")],
        "messages": [
            {"role": "user", "content": [five_minutes(f"{DIRECTIVES} " + "summarise the cached document " * 10)]}
        ],
    }
    if stream:
        with client.messages.stream(**request) as events:
            message = events.get_final_message()
            request_id = events.response.headers["x-request-id"]
    else:
        raw = client.messages.with_raw_response.create(**request)
        message, request_id = raw.parse(), raw.headers["x-request-id"]

    usage = message.usage
    assert usage.cache_creation_input_tokens == 50
    assert usage.cache_creation.ephemeral_1h_input_tokens == 20
    assert usage.cache_creation.ephemeral_5m_input_tokens == 30
    rec = UsageRecord.objects.get(request_id=request_id)
    assert (rec.cached_input_tokens, rec.cache_write_tokens, rec.cache_write_1h_tokens) == (10, 50, 20)
    assert rec.input_tokens == usage.input_tokens + 10 + 50
    assert rec.output_tokens == usage.output_tokens
    assert rec.input_tokens <= THRESHOLD
    assert rec.price_tier_id is None
    assert rec.cost == cost(BASE, rec)
    # Not what one write price would have made of it.
    assert rec.cost - 20 * (BASE["write_1h"] - BASE["write"]) / MILLION == cost(
        {**BASE, "write_1h": BASE["write"]}, rec
    )


def test_only_one_hour_breakpoints_make_every_write_a_one_hour_write(gateway, sonnet, alice_key):
    client = anthropic.Anthropic(base_url=gateway, api_key=alice_key, max_retries=0)
    raw = client.messages.with_raw_response.create(
        model="claude-long",
        max_tokens=20,
        messages=[
            {"role": "user", "content": [one_hour("[[mock:cache_write=40]] " + "the whole prompt, for an hour " * 8)]}
        ],
    )
    message = raw.parse()
    assert (message.usage.cache_creation.ephemeral_1h_input_tokens, message.usage.cache_creation_input_tokens) == (
        40,
        40,
    )
    rec = UsageRecord.objects.get(request_id=raw.headers["x-request-id"])
    assert (rec.cache_write_tokens, rec.cache_write_1h_tokens) == (40, 40)
    assert rec.cost == cost(BASE, rec)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_behind_an_openai_client_the_one_hour_writes_are_still_billed_exactly(gateway, sonnet, alice_key, stream):
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=alice_key, max_retries=0)
    messages = [{"role": "user", "content": f"{DIRECTIVES} " + "translated, with writes of both lifetimes " * 8}]
    if stream:
        raw = client.chat.completions.with_raw_response.create(
            model="claude-long", messages=messages, max_tokens=30, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(raw.parse())
        usage = chunks[-1].usage
    else:
        raw = client.chat.completions.with_raw_response.create(model="claude-long", messages=messages, max_tokens=30)
        usage = raw.parse().usage
    # OpenAI's shape: the whole prompt, cache reads as cached_tokens; no place for the lifetimes.
    assert usage.prompt_tokens_details.cached_tokens == 10
    rec = UsageRecord.objects.get(request_id=raw.headers["x-request-id"])
    assert rec.input_tokens == usage.prompt_tokens
    assert (rec.cached_input_tokens, rec.cache_write_tokens, rec.cache_write_1h_tokens) == (10, 50, 20)
    assert rec.output_tokens == usage.completion_tokens
    assert rec.cost == cost(BASE, rec)


@pytest.mark.parametrize("endpoint", ["messages", "chat"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_prompt_above_the_threshold_is_billed_wholly_at_the_long_context_tier(
    gateway, sonnet, alice_key, endpoint, stream
):
    text = "[[mock:cached=100]] [[mock:cache_write_1h=50]] " + " ".join(["context"] * (THRESHOLD + 50))
    if endpoint == "messages":
        client = anthropic.Anthropic(base_url=gateway, api_key=alice_key, max_retries=0)
        raw = client.messages.with_raw_response.create(
            model="claude-long", max_tokens=30, messages=[{"role": "user", "content": text}], stream=stream
        )
        body = raw.parse()
        if stream:
            list(body)
    else:
        client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=alice_key, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="claude-long", messages=[{"role": "user", "content": text}], max_tokens=30, stream=stream
        )
        body = raw.parse()
        if stream:
            list(body)
    rec = UsageRecord.objects.get(request_id=raw.headers["x-request-id"])
    assert rec.input_tokens > THRESHOLD
    assert (rec.cached_input_tokens, rec.cache_write_tokens, rec.cache_write_1h_tokens) == (100, 50, 50)
    assert rec.price_id == sonnet["price"].id
    assert rec.price_tier_id == sonnet["tier"].id
    assert not rec.estimated
    assert rec.cost == cost(TIER, rec)
    assert rec.cost > cost(BASE, rec)


def test_a_prompt_at_the_threshold_keeps_the_base_prices(gateway, sonnet, alice_key):
    client = anthropic.Anthropic(base_url=gateway, api_key=alice_key, max_retries=0)
    raw = client.messages.with_raw_response.create(
        model="claude-long", max_tokens=10, messages=[{"role": "user", "content": "short and cheap"}]
    )
    rec = UsageRecord.objects.get(request_id=raw.headers["x-request-id"])
    assert rec.price_tier_id is None
    assert rec.cost == cost(BASE, rec)
