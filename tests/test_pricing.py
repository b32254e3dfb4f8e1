from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.pricing import Price, Tier, Tokens, request_cost, worst_case_cost

GPT = Price(input_per_1m=Decimal("0.15"), output_per_1m=Decimal("0.60"), cached_input_per_1m=Decimal("0.075"))
CLAUDE = Price(
    input_per_1m=Decimal("3.00"),
    output_per_1m=Decimal("15.00"),
    cached_input_per_1m=Decimal("0.30"),
    cache_write_per_1m=Decimal("3.75"),
)


def test_it_prices_input_and_output_to_the_last_digit():
    assert request_cost(tokens=Tokens(input=12, output=20), price=GPT) == Decimal("0.0000138")


def test_cached_tokens_are_part_of_the_input_and_billed_at_the_cached_price():
    # 1000 prompt tokens of which 800 cached: 200 × 0.15 + 800 × 0.075 = 90 per million
    assert request_cost(tokens=Tokens(input=1000, cached_input=800), price=GPT) == Decimal("0.00009")


def test_anthropic_cache_writes_and_reads_have_their_own_prices():
    tokens = Tokens(input=10_000, cached_input=6_000, cache_write=3_000, output=500)
    # 1000 × 3 + 6000 × 0.30 + 3000 × 3.75 + 500 × 15 = 3000 + 1800 + 11250 + 7500
    assert request_cost(tokens=tokens, price=CLAUDE) == Decimal("0.02355")


def test_missing_cache_prices_fall_back_to_the_input_price():
    price = Price(input_per_1m=Decimal("2.50"), output_per_1m=Decimal("10"))
    assert request_cost(tokens=Tokens(input=100, cached_input=50, cache_write=50), price=price) == Decimal("0.00025")


def test_a_request_without_tokens_costs_nothing():
    assert request_cost(tokens=Tokens(), price=CLAUDE) == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"input": -1},
        {"output": -5},
        {"input": 10, "cached_input": 11},
        {"input": 10, "cached_input": 6, "cache_write": 5},
    ],
)
def test_impossible_token_counts_are_refused(kwargs):
    with pytest.raises(ValueError, match="token"):
        Tokens(**kwargs)


def test_worst_case_covers_prompt_and_max_output():
    assert worst_case_cost(prompt_tokens=100, max_output_tokens=1000, price=GPT) == Decimal("0.000615")


@given(
    prompt=st.integers(0, 2_000_000),
    cached_share=st.floats(0, 1),
    output=st.integers(0, 200_000),
)
def test_cost_is_exact_and_additive(prompt, cached_share, output):
    cached = int(prompt * cached_share)
    tokens = Tokens(input=prompt, cached_input=cached, output=output)
    cost = request_cost(tokens=tokens, price=GPT)
    parts = (
        request_cost(tokens=Tokens(input=prompt - cached), price=GPT)
        + request_cost(tokens=Tokens(input=cached, cached_input=cached), price=GPT)
        + request_cost(tokens=Tokens(output=output), price=GPT)
    )
    assert cost == parts
    assert cost.as_tuple().exponent >= -12  # fits the 12 decimal places of UsageRecord.cost exactly


# --- cache writes by lifetime, long-context tiers ---------------------------------------------

SONNET = Price(
    input_per_1m=Decimal("3.00"),
    output_per_1m=Decimal("15.00"),
    cached_input_per_1m=Decimal("0.30"),
    cache_write_per_1m=Decimal("3.75"),
    cache_write_1h_per_1m=Decimal("6.00"),
    tiers=(
        Tier(
            above_input_tokens=200_000,
            input_per_1m=Decimal("6.00"),
            output_per_1m=Decimal("22.50"),
            cached_input_per_1m=Decimal("0.60"),
            cache_write_per_1m=Decimal("7.50"),
            cache_write_1h_per_1m=Decimal("12.00"),
            id=7,
        ),
    ),
)


def test_one_hour_cache_writes_have_their_own_price():
    tokens = Tokens(input=10_000, cached_input=2_000, cache_write=5_000, cache_write_1h=3_000, output=400)
    # 3000 × 3 + 2000 × 0.30 + 2000 × 3.75 + 3000 × 6 + 400 × 15 = 9000 + 600 + 7500 + 18000 + 6000
    assert request_cost(tokens=tokens, price=SONNET) == Decimal("0.0411")


def test_an_empty_one_hour_price_falls_back_to_the_cache_write_price_then_to_input():
    tokens = Tokens(input=1_000, cache_write=1_000, cache_write_1h=400)
    assert request_cost(tokens=tokens, price=CLAUDE) == Decimal("0.00375")  # every write at 3.75
    bare = Price(input_per_1m=Decimal("2"), output_per_1m=Decimal("8"))
    assert request_cost(tokens=tokens, price=bare) == Decimal("0.002")  # every write at the input price


def test_the_long_context_tier_prices_the_whole_request_above_its_threshold_only():
    at_threshold = Tokens(input=200_000, output=1_000)
    assert SONNET.tier_for(200_000) is None
    assert request_cost(tokens=at_threshold, price=SONNET) == Decimal("0.615")  # 200000 × 3 + 1000 × 15
    above = Tokens(input=200_001, cached_input=100_000, cache_write=50_000, cache_write_1h=20_000, output=1_000)
    assert SONNET.tier_for(200_001).id == 7
    # 50001 × 6 + 100000 × 0.60 + 30000 × 7.50 + 20000 × 12 + 1000 × 22.50
    expected = (
        50_001 * 6 + 100_000 * Decimal("0.60") + 30_000 * Decimal("7.50") + 20_000 * 12 + 1_000 * Decimal("22.50")
    )
    assert request_cost(tokens=above, price=SONNET) == expected / 1_000_000 == Decimal("0.847506")


def test_cache_tokens_count_towards_the_threshold():
    # 10 uncached tokens, the rest read from the cache: still a 300k-token prompt.
    tokens = Tokens(input=300_000, cached_input=299_990)
    assert request_cost(tokens=tokens, price=SONNET) == Decimal("0.180054")  # 10 × 6 + 299990 × 0.60 (base: 0.090027)


def test_the_highest_tier_reached_applies_and_empty_tier_prices_fall_back_within_the_tier():
    price = Price(
        input_per_1m=Decimal("1"),
        output_per_1m=Decimal("2"),
        cache_write_per_1m=Decimal("1.25"),
        tiers=(
            Tier(above_input_tokens=1_000_000, input_per_1m=Decimal("4"), output_per_1m=Decimal("8")),
            Tier(above_input_tokens=100, input_per_1m=Decimal("2"), output_per_1m=Decimal("4"),
                 cache_write_per_1m=Decimal("2.5")),
        ),
    )  # fmt: skip
    assert price.tier_for(150).above_input_tokens == 100
    assert price.tier_for(1_000_001).above_input_tokens == 1_000_000
    # The 100-token tier: its own write price for 5-minute and (no 1-hour price) 1-hour writes, no cached price.
    tokens = Tokens(input=200, cached_input=50, cache_write=100, cache_write_1h=40, output=10)
    assert request_cost(tokens=tokens, price=price) == Decimal("0.000490")  # 50×2 + 50×2 + 100×2.5 + 10×4
    big = Tokens(input=2_000_000, cached_input=1_000_000, cache_write=500_000, cache_write_1h=500_000)
    assert request_cost(tokens=big, price=price) == Decimal("8")  # every token at the tier's input price 4


def test_one_hour_writes_are_part_of_the_writes():
    with pytest.raises(ValueError, match="one-hour"):
        Tokens(input=10, cache_write=5, cache_write_1h=6)
    with pytest.raises(ValueError, match="negative"):
        Tokens(input=10, cache_write_1h=-1)


def test_the_worst_case_holds_the_highest_tier_the_prompt_bound_reaches_at_the_dearest_input_price():
    # Below the threshold: base prices, each prompt token at the 1-hour write price (6.00).
    assert worst_case_cost(prompt_tokens=1_000, max_output_tokens=100, price=SONNET) == Decimal("0.0075")
    # Above: the tier, each prompt token at its 1-hour write price (12.00), output at 22.50.
    assert worst_case_cost(prompt_tokens=300_000, max_output_tokens=1_000, price=SONNET) == Decimal("3.6225")


@given(
    prompt=st.integers(0, 1_500_000),
    cached_share=st.floats(0, 1),
    write_share=st.floats(0, 1),
    one_hour_share=st.floats(0, 1),
    output=st.integers(0, 100_000),
)
def test_a_request_never_costs_more_than_its_worst_case_and_is_exact(
    prompt, cached_share, write_share, one_hour_share, output
):
    cached = int(prompt * cached_share)
    write = int((prompt - cached) * write_share)
    one_hour = int(write * one_hour_share)
    tokens = Tokens(input=prompt, cached_input=cached, cache_write=write, cache_write_1h=one_hour, output=output)
    cost = request_cost(tokens=tokens, price=SONNET)
    assert cost <= worst_case_cost(prompt_tokens=prompt, max_output_tokens=output, price=SONNET)
    assert cost.as_tuple().exponent >= -12
    rates = SONNET.rates(SONNET.tier_for(prompt))
    by_hand = (
        (prompt - cached - write) * rates.input
        + cached * rates.cached_input
        + (write - one_hour) * rates.cache_write
        + one_hour * rates.cache_write_1h
        + output * rates.output
    ) / 1_000_000
    assert cost == by_hand
