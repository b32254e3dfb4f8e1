from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.pricing import Price, Tokens, request_cost, worst_case_cost

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
