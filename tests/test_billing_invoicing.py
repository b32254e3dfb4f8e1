"""The pure invoice arithmetic: lines, rounding, plan terms, shared-cost allocation, periods."""

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.invoicing import (
    CostMismatch,
    LineType,
    PriceUsage,
    Terms,
    invoice_lines,
    invoice_total,
    round_cents,
    shared_cost_allocate,
)
from billing.models import InvoiceLine
from billing.periods import PeriodState, day_runs, month_end, period_parse, period_state
from billing.pricing import Price, Tier, Tokens, request_cost

D = Decimal
GPT = Price(input_per_1m=D("2.50"), output_per_1m=D("10.00"), cached_input_per_1m=D("1.25"))
FROM = datetime(2024, 5, 1, tzinfo=UTC)


def price_usage(*, price=GPT, price_id=1, model="gpt", input_tokens=0, cached=0, write=0, output=0):
    cost = request_cost(
        tokens=Tokens(input=input_tokens, cached_input=cached, cache_write=write, output=output), price=price
    )
    return PriceUsage(
        price_id=price_id,
        model=model,
        effective_from=FROM,
        price=price,
        input_tokens=input_tokens,
        cached_input_tokens=cached,
        cache_write_tokens=write,
        output_tokens=output,
        cost=cost,
    )


def by_type(lines):
    return {line.line_type: line for line in lines}


def test_the_line_types_are_the_models_choices():
    assert {t.value for t in LineType} == set(InvoiceLine.Type.values)


def test_rounding_is_half_up_to_the_cent():
    assert round_cents(D("0.005")) == D("0.01")
    assert round_cents(D("0.0049999999")) == D("0.00")
    assert round_cents(D("2.675")) == D("2.68")  # a float would say 2.67
    assert round_cents(D("-0.005")) == D("-0.01")


def test_usage_lines_per_token_type_with_quantity_unit_price_and_one_rounding():
    usage = price_usage(input_tokens=1_000_000, cached=400_000, output=3_333)
    lines = by_type(invoice_lines(usage=[usage], terms=Terms()))
    assert set(lines) == {LineType.INPUT, LineType.CACHED_INPUT, LineType.OUTPUT}  # no cache writes: no line
    assert lines[LineType.INPUT].quantity == 600_000
    assert lines[LineType.INPUT].unit == "1M tokens"
    assert lines[LineType.INPUT].unit_price == D("2.50")
    assert lines[LineType.INPUT].amount == D("1.50")
    assert lines[LineType.CACHED_INPUT].amount == D("0.50")
    # 3333 × 10 / 1M = 0.03333 -> 0.03
    assert lines[LineType.OUTPUT].amount == D("0.03")
    assert lines[LineType.OUTPUT].key == "output:1"


def test_a_missing_cached_price_bills_cached_tokens_at_the_input_price():
    price = Price(input_per_1m=D("3"), output_per_1m=D("15"), cache_write_per_1m=D("3.75"))
    lines = by_type(
        invoice_lines(usage=[price_usage(price=price, input_tokens=300, cached=100, write=100)], terms=Terms())
    )
    assert lines[LineType.CACHED_INPUT].unit_price == D("3")
    assert lines[LineType.CACHE_WRITE].unit_price == D("3.75")


def test_stored_costs_that_do_not_match_the_tokens_are_refused():
    usage = price_usage(input_tokens=1000)
    broken = PriceUsage(**{**{f: getattr(usage, f) for f in usage.__slots__}, "cost": usage.cost + D("0.000001")})
    with pytest.raises(CostMismatch, match="price #1"):
        invoice_lines(usage=[broken], terms=Terms())


def test_markup_is_one_line_on_the_exact_provider_cost():
    # Three usage lines that each round down: 0.004 + 0.004 + 0.004; exact cost 0.012.
    usage = [price_usage(price_id=i, model=f"m{i}", input_tokens=1600) for i in (1, 2, 3)]
    lines = invoice_lines(usage=usage, terms=Terms(markup_percent=D("50")))
    markup = by_type(lines)[LineType.MARKUP]
    assert markup.quantity == D("0.012")
    assert markup.unit_price == D("0.5")
    assert markup.amount == D("0.01")  # 0.006 half-up
    assert markup.unit == "USD"
    assert invoice_total(lines) == D("0.01")


def test_base_fee_and_allowance_credit_up_to_the_usage():
    usage = [price_usage(input_tokens=4_000_000)]  # 10.00
    terms = Terms(base_fee=D("100"), included_allowance=D("50"), markup_percent=D("20"))
    lines = by_type(invoice_lines(usage=usage, terms=terms))
    assert lines[LineType.MARKUP].amount == D("2.00")
    assert lines[LineType.BASE_FEE].amount == D("100.00")
    assert lines[LineType.ALLOWANCE_CREDIT].amount == D("-12.00")  # usage after markup, less than 50
    big = by_type(invoice_lines(usage=[price_usage(input_tokens=40_000_000)], terms=terms))
    assert big[LineType.ALLOWANCE_CREDIT].amount == D("-50.00")
    assert LineType.ALLOWANCE_CREDIT not in by_type(invoice_lines(usage=[], terms=terms))


def test_minimum_commitment_trues_up_the_shortfall_only():
    terms = Terms(base_fee=D("10"), minimum_commitment=D("25"))
    lines = invoice_lines(usage=[price_usage(input_tokens=2_000_000)], terms=terms, shared_cost=D("1.10"))
    true_up = by_type(lines)[LineType.MINIMUM_COMMITMENT]
    assert true_up.amount == D("25") - D("5.00") - D("10") - D("1.10")
    assert lines[-1] == true_up
    assert invoice_total(lines) == D("25.00")
    above = invoice_lines(usage=[price_usage(input_tokens=20_000_000)], terms=terms)
    assert LineType.MINIMUM_COMMITMENT not in by_type(above)


def test_lines_come_in_a_stable_order():
    usage = [
        price_usage(price_id=7, model="b", input_tokens=10, output=10),
        price_usage(price_id=3, model="a", input_tokens=10),
    ]
    terms = Terms(base_fee=D("1"), markup_percent=D("1"))
    keys = [line.key for line in invoice_lines(usage=usage, terms=terms, shared_cost=D("2"))]
    assert keys == ["input:3", "input:7", "output:7", "markup", "base_fee", "shared_cost"]


# --- shared cost ---------------------------------------------------------------------------


def test_shared_cost_is_pro_rata_and_adds_up_to_the_cent():
    shares = shared_cost_allocate(total=D("100.00"), weights={"a": D("1"), "b": D("1"), "c": D("1")})
    assert sum(shares.values()) == D("100.00")
    # 33.333… each: the leftover cent goes to the first by slug (equal remainders).
    assert shares == {"a": D("33.34"), "b": D("33.33"), "c": D("33.33")}


def test_shared_cost_leftover_cents_go_to_the_largest_remainders():
    shares = shared_cost_allocate(total=D("1.00"), weights={"z": D("0.7"), "y": D("0.2"), "x": D("0.1")})
    assert shares == {"z": D("0.70"), "y": D("0.20"), "x": D("0.10")}
    shares = shared_cost_allocate(total=D("0.10"), weights={"small": D("1"), "big": D("2")})
    # exact 0.0333… and 0.0666…: floors 3 and 6 cents, the cent left goes to the larger remainder
    assert shares == {"small": D("0.03"), "big": D("0.07")}


def test_shared_cost_without_any_usage_is_split_equally():
    assert shared_cost_allocate(total=D("0.02"), weights={"b": D(0), "a": D(0), "c": D(0)}) == {
        "a": D("0.01"),
        "b": D("0.01"),
        "c": D("0.00"),
    }


def test_shared_cost_refuses_fractions_of_a_cent():
    with pytest.raises(ValueError, match="cents"):
        shared_cost_allocate(total=D("1.005"), weights={"a": D(1)})


@given(
    total=st.decimals(min_value=0, max_value=10**9, places=2, allow_nan=False, allow_infinity=False),
    weights=st.dictionaries(
        st.text("abcdefgh", min_size=1, max_size=4),
        st.decimals(min_value=0, max_value=10**6, places=12, allow_nan=False, allow_infinity=False),
        min_size=1,
        max_size=12,
    ),
)
def test_shared_cost_shares_always_add_up_and_each_is_within_a_cent_of_exact(total, weights):
    shares = shared_cost_allocate(total=total, weights=weights)
    assert set(shares) == set(weights)
    assert sum(shares.values()) == total
    whole = sum(weights.values())
    for key, share in shares.items():
        assert share == share.quantize(D("0.01"))
        exact = total * weights[key] / whole if whole else total / len(weights)
        assert abs(share - exact) < D("0.01")
    assert shares == shared_cost_allocate(total=total, weights=dict(reversed(list(weights.items()))))


# --- periods -------------------------------------------------------------------------------


def test_periods_parse_and_move_through_open_grace_and_closed():
    may = period_parse("2024-05")
    assert may == date(2024, 5, 1)
    assert month_end(may) == date(2024, 5, 31)
    assert month_end(period_parse("2024-02")) == date(2024, 2, 29)
    assert month_end(period_parse("2024-12")) == date(2024, 12, 31)
    for bad in ["2024-13", "2024-5", "May", "2024-05-01"]:
        with pytest.raises(ValueError, match="period|month"):
            period_parse(bad)

    def state(*args):
        return period_state(may, now=datetime(*args, tzinfo=UTC), grace_days=3)

    assert state(2024, 4, 30, 23, 59) is PeriodState.FUTURE
    assert state(2024, 5, 31, 23, 59) is PeriodState.OPEN
    assert state(2024, 6, 1, 0, 0) is PeriodState.GRACE
    assert state(2024, 6, 3, 23, 59) is PeriodState.GRACE
    assert state(2024, 6, 4, 0, 0) is PeriodState.CLOSED


def test_day_runs_group_consecutive_days():
    days = [date(2024, 5, d) for d in (5, 1, 2, 3, 7, 8)]
    assert day_runs(days) == [
        (date(2024, 5, 1), date(2024, 5, 3)),
        (date(2024, 5, 5), date(2024, 5, 5)),
        (date(2024, 5, 7), date(2024, 5, 8)),
    ]


# --- cache-write lifetimes and long-context tiers ---------------------------------------------

SONNET = Price(
    input_per_1m=D("3"),
    output_per_1m=D("15"),
    cached_input_per_1m=D("0.30"),
    cache_write_per_1m=D("3.75"),
    cache_write_1h_per_1m=D("6"),
    tiers=(Tier(above_input_tokens=200_000, input_per_1m=D("6"), output_per_1m=D("22.5"), id=5),),
)


def tiered_usage(*, tier, input_tokens, write, write_1h, output, cost=None):
    tokens = Tokens(input=input_tokens, cache_write=write, cache_write_1h=write_1h, output=output)
    return PriceUsage(
        price_id=1,
        model="sonnet",
        effective_from=FROM,
        price=SONNET,
        input_tokens=input_tokens,
        cached_input_tokens=0,
        cache_write_tokens=write,
        cache_write_1h_tokens=write_1h,
        output_tokens=output,
        cost=request_cost(tokens=tokens, price=SONNET) if cost is None else cost,
        tier=tier,
    )


def test_one_hour_writes_and_long_context_usage_get_their_own_lines_and_keys():
    base = tiered_usage(tier=None, input_tokens=100_000, write=40_000, write_1h=10_000, output=1_000)
    long = tiered_usage(tier=SONNET.tiers[0], input_tokens=300_000, write=0, write_1h=0, output=2_000)
    lines = by_type(invoice_lines(usage=[long, base], terms=Terms()))
    assert lines[LineType.CACHE_WRITE].quantity == 30_000
    assert lines[LineType.CACHE_WRITE].unit_price == D("3.75")
    assert lines[LineType.CACHE_WRITE_1H].quantity == 10_000
    assert lines[LineType.CACHE_WRITE_1H].amount == D("0.06")
    assert lines[LineType.CACHE_WRITE].key == "cache_write:1"  # a base line keeps its key
    assert lines[LineType.LONG_INPUT].key == "long_input:1:5"
    assert (lines[LineType.LONG_INPUT].quantity, lines[LineType.LONG_INPUT].amount) == (300_000, D("1.80"))
    assert lines[LineType.LONG_OUTPUT].unit_price == D("22.5")
    assert lines[LineType.LONG_OUTPUT].price_tier_id == 5
    assert LineType.LONG_CACHE_WRITE not in lines  # no tokens: no line


def test_a_tier_group_whose_stored_cost_is_the_base_price_is_refused():
    wrong = tiered_usage(
        tier=SONNET.tiers[0], input_tokens=300_000, write=0, write_1h=0, output=0, cost=D("0.9")
    )  # 300000 × 3: billed at the base price, claimed at the tier
    with pytest.raises(CostMismatch, match="tier above 200000"):
        invoice_lines(usage=[wrong], terms=Terms())
