"""Cache-write lifetimes on the way from the provider's usage to the record, without a server:
Anthropic's `cache_creation` read into `Tokens.cache_write_1h` (JSON, passthrough and translated
streams), the mock's split by the request's cache_control ttls, and the journal's and the
response cache's serialisations carrying the 1-hour part and the price's tiers."""

from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest

from billing.pricing import Price, Tier, Tokens
from gateway import journal
from gateway.cache import Cached, _decode, _encode
from gateway.metered import Metered
from gateway.metering import tokens_from_anthropic
from gateway.mock.server import ApiError, anthropic_exchange, anthropic_usage, compose_reply, usage_of
from gateway.streams import AnthropicPassthrough, AnthropicToOpenAI

D = Decimal
USAGE = {
    "input_tokens": 7,
    "cache_creation_input_tokens": 50,
    "cache_read_input_tokens": 10,
    "cache_creation": {"ephemeral_5m_input_tokens": 30, "ephemeral_1h_input_tokens": 20},
    "output_tokens": 12,
}


def test_anthropic_usage_splits_the_writes_by_lifetime():
    assert tokens_from_anthropic(USAGE) == Tokens(
        input=67, cached_input=10, cache_write=50, cache_write_1h=20, output=12
    )


def test_usage_without_the_split_has_no_one_hour_writes_and_a_bad_split_never_bills_more_than_the_writes():
    plain = {key: value for key, value in USAGE.items() if key != "cache_creation"}
    assert tokens_from_anthropic(plain).cache_write_1h == 0
    wrong = {**USAGE, "cache_creation": {"ephemeral_1h_input_tokens": 80}}
    assert tokens_from_anthropic(wrong).cache_write_1h == 50
    only_split = {key: value for key, value in USAGE.items() if key != "cache_creation_input_tokens"}
    assert tokens_from_anthropic(only_split).cache_write == 50
    nulls = {**USAGE, "cache_creation": None}
    assert tokens_from_anthropic(nulls).cache_write_1h == 0


def stream_events() -> list[dict]:
    """message_start carries the split; message_delta's cumulative usage does not (as the real API)."""
    counts = {key: USAGE[key] for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")}
    return [
        {"type": "message_start", "message": {"id": "m", "content": [], "usage": {**USAGE, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {**counts, "output_tokens": 12}},
        {"type": "message_stop"},
    ]  # fmt: skip


@pytest.mark.parametrize(
    "processor",
    [
        lambda: AnthropicPassthrough(model="c"),
        lambda: AnthropicToOpenAI(model="c", include_usage=True, completion_id="chatcmpl-1"),
    ],
    ids=["passthrough", "translated"],
)
def test_streams_keep_message_starts_split_through_message_delta(processor):
    processor = processor()
    for event in stream_events():
        processor.feed(event)
    assert processor.reported_tokens() == Tokens(
        input=67, cached_input=10, cache_write=50, cache_write_1h=20, output=12
    )


def mock_usage(blocks: list[dict], text: str) -> dict:
    body = {
        "model": "claude-x",
        "max_tokens": 10,
        "system": blocks,
        "messages": [{"role": "user", "content": text + " " + "padding words " * 40}],
    }
    exchange = anthropic_exchange(body)
    return anthropic_usage(usage_of(exchange, compose_reply(exchange, tool_id="t")))


def block(ttl: str | None) -> dict:
    control = {"type": "ephemeral"} if ttl is None else {"type": "ephemeral", "ttl": ttl}
    return {"type": "text", "text": "system", "cache_control": control}


@pytest.mark.parametrize(
    ("blocks", "split"),
    [
        ([], (30, 20)),  # no breakpoint (a translated request): as the directives say
        ([block(None), block("1h")], (30, 20)),  # both lifetimes asked for: as the directives say
        ([block("5m")], (50, 0)),  # only 5-minute breakpoints: nothing is kept for an hour
        ([block("1h")], (0, 50)),  # only 1-hour breakpoints: every write is a 1-hour one
    ],
)
def test_the_mock_splits_writes_by_the_requests_cache_control_ttls(blocks, split):
    usage = mock_usage(blocks, "[[mock:cache_write=30]] [[mock:cache_write_1h=20]]")
    creation = usage["cache_creation"]
    assert (creation["ephemeral_5m_input_tokens"], creation["ephemeral_1h_input_tokens"]) == split
    assert usage["cache_creation_input_tokens"] == 50


def test_the_mock_refuses_an_unknown_ttl():
    with pytest.raises(ApiError, match="ttl"):
        mock_usage([block("2h")], "hello")


PRICE = Price(
    input_per_1m=D("3"),
    output_per_1m=D("15"),
    cache_write_per_1m=D("3.75"),
    cache_write_1h_per_1m=D("6"),
    tiers=(
        Tier(above_input_tokens=100, input_per_1m=D("6"), output_per_1m=D("22.5"), cache_write_1h_per_1m=D("12"), id=9),
    ),
)


def metered(tokens: Tokens) -> Metered:
    return Metered(
        request_id="r1",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        tenant_id=1,
        api_key_id=None,
        model="m",
        provider="anthropic",
        upstream_model="u",
        endpoint="messages",
        status_code=200,
        error_type="",
        tokens=tokens,
        price_id=3,
        price=PRICE,
        latency_ms=5,
        streamed=True,
        estimated=False,
    )


def test_a_spooled_record_keeps_the_one_hour_writes_and_the_tiers():
    original = metered(Tokens(input=150, cache_write=60, cache_write_1h=40, output=3))
    assert journal._metered_load(journal._metered_dump(original)) == original


def test_a_record_spooled_before_lifetimes_and_tiers_still_loads():
    old = orjson.loads(journal._metered_dump(metered(Tokens(input=10, cache_write=4, output=1))))
    old["tokens"], old["price"] = old["tokens"][:4], old["price"][:4]
    del old["tiers"]
    loaded = journal._metered_load(orjson.dumps(old))
    assert loaded.tokens == Tokens(input=10, cache_write=4, output=1)
    assert loaded.price == Price(input_per_1m=D("3"), output_per_1m=D("15"), cache_write_per_1m=D("3.75"))


def test_a_response_cache_entry_keeps_the_one_hour_writes():
    cached = Cached(response={"id": "x"}, tokens=Tokens(input=10, cache_write=5, cache_write_1h=2, output=1))
    assert _decode(_encode(cached)) == cached
    old = orjson.dumps({"response": {"id": "x"}, "tokens": [10, 0, 5, 1]})
    assert _decode(old).tokens == Tokens(input=10, cache_write=5, output=1)
