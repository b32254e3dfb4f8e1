"""Invoices bill 5-minute and 1-hour cache writes and long-context usage on lines of their own:
quantities in tokens, the price of each, amounts rounded once; the total is the sum of the lines;
rolling up and generating twice gives the same invoice; the finance CSV and the invoice page show
the new lines with the same figures; the finance summary counts them as provider cost."""

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from billing.invoicing import LineType
from billing.models import Invoice, PriceTier, UsageRollup
from billing.selectors import finance_summary
from billing.services import invoices_generate
from tests.billing_fixtures import at, save, usage
from tests.conftest import make_model, make_tenant
from tests.test_invoice_page import csv_rows, page_of, ungroup

D = Decimal
MARCH = date(2024, 3, 1)
CLOSED = datetime(2024, 4, 20, tzinfo=UTC)


@pytest.fixture
def sonnet(db):
    model = make_model(
        "sonnet-1m",
        "anthropic",
        "claude-sonnet-4-5",
        input_per_1m="3.00",
        output_per_1m="15.00",
        cached="0.30",
        cache_write="3.75",
    )
    price = model.prices.get()
    price.cache_write_1h_per_1m = D("6.00")
    price.save()
    tier = PriceTier.objects.create(
        price=price,
        above_input_tokens=200_000,
        input_per_1m=D("6.00"),
        output_per_1m=D("22.50"),
        cached_input_per_1m=D("0.60"),
        cache_write_per_1m=D("7.50"),
        cache_write_1h_per_1m=D("12.00"),
    )
    return {"model": model, "price": price, "tier": tier}


@pytest.fixture
def march(sonnet):
    alice = make_tenant("alice")
    model = sonnet["model"]
    save(
        # Short prompts: the base prices, 5-minute and 1-hour writes apart (two days: rollups sum them).
        usage(alice, model, at(date(2024, 3, 3)), input_tokens=100_000, cached=20_000, cache_write=30_000,
              cache_write_1h=10_000, output_tokens=2_000),
        usage(alice, model, at(date(2024, 3, 4)), input_tokens=150_000, cache_write=50_000, cache_write_1h=50_000,
              output_tokens=1_000),
        # Long prompts: the whole request at the tier.
        usage(alice, model, at(date(2024, 3, 5)), input_tokens=250_000, cached=100_000, cache_write=40_000,
              cache_write_1h=15_000, output_tokens=3_000),
        usage(alice, model, at(date(2024, 3, 6)), input_tokens=300_001, output_tokens=500),
    )  # fmt: skip
    invoices_generate(period=MARCH, now=CLOSED)
    return Invoice.objects.get(tenant=alice, period=MARCH)


def lines_of(invoice) -> dict[str, tuple[Decimal, Decimal, Decimal]]:
    return {line.line_type: (line.quantity, line.unit_price, line.amount) for line in invoice.lines.all()}


@pytest.mark.django_db
def test_cache_write_lifetimes_and_long_context_have_lines_of_their_own(march, sonnet):
    lines = lines_of(march)
    assert lines[LineType.INPUT] == (D(150_000), D("3"), D("0.45"))  # 50000 + 100000 uncached
    assert lines[LineType.CACHED_INPUT] == (D(20_000), D("0.3"), D("0.01"))  # 0.006 → 0.01
    assert lines[LineType.CACHE_WRITE] == (D(20_000), D("3.75"), D("0.08"))  # 0.075 → 0.08
    assert lines[LineType.CACHE_WRITE_1H] == (D(60_000), D("6"), D("0.36"))
    assert lines[LineType.OUTPUT] == (D(3_000), D("15"), D("0.05"))  # 0.045 → 0.05
    assert lines[LineType.LONG_INPUT] == (D(410_001), D("6"), D("2.46"))  # 110000 + 300001: 2.460006
    assert lines[LineType.LONG_CACHED_INPUT] == (D(100_000), D("0.6"), D("0.06"))
    assert lines[LineType.LONG_CACHE_WRITE] == (D(25_000), D("7.5"), D("0.19"))  # 0.1875
    assert lines[LineType.LONG_CACHE_WRITE_1H] == (D(15_000), D("12"), D("0.18"))
    assert lines[LineType.LONG_OUTPUT] == (D(3_500), D("22.5"), D("0.08"))  # 0.07875
    long_lines = march.lines.filter(line_type__startswith="long_")
    assert {line.price_tier_id for line in long_lines} == {sonnet["tier"].id}
    assert all("long context (input above 200,000 tokens)" in line.description for line in long_lines)
    assert march.lines.get(line_type=LineType.CACHE_WRITE_1H).description.startswith("sonnet-1m 1-hour cache write")
    assert march.lines.get(line_type=LineType.CACHE_WRITE).description.startswith("sonnet-1m 5-minute cache write")
    # The exact provider cost is the records' stored costs; the total is the sum of the rounded lines.
    # base: 450000 + 6000 + 75000 + 360000 + 45000; tier: 2460006 + 60000 + 187500 + 180000 + 78750 (per 1M)
    assert march.provider_cost == D("0.936") + D("2.966256")
    assert march.total == sum(amount for _, _, amount in lines.values())


@pytest.mark.django_db
def test_the_rollup_keeps_tiers_apart_and_a_second_run_changes_nothing(march):
    tiers = set(UsageRollup.objects.values_list("day", "price_tier_id"))
    assert len({tier for _, tier in tiers}) == 2  # base (None) and the tier
    assert sum(UsageRollup.objects.values_list("cache_write_1h_tokens", flat=True)) == 75_000
    before = [(line.key, line.quantity, line.amount) for line in march.lines.order_by("position")]
    result = invoices_generate(period=MARCH, now=CLOSED)
    assert (result.unchanged, result.updated, result.created) == (1, 0, 0)
    march.refresh_from_db()
    assert [(line.key, line.quantity, line.amount) for line in march.lines.order_by("position")] == before


@pytest.mark.django_db
def test_the_csv_the_page_and_the_finance_summary_show_the_new_lines(admin_client, march):
    rows = [row for row in csv_rows() if row["invoice number"] == march.number]
    types = [row["line type"] for row in rows]
    for line_type in ("cache_write", "cache_write_1h", "long_input", "long_cache_write_1h", "long_output"):
        assert line_type in types
    by_type = {row["line type"]: row for row in rows}
    assert (by_type["cache_write_1h"]["quantity"], by_type["cache_write_1h"]["unit price"]) == ("60000", "6.00")
    assert by_type["long_cache_write_1h"]["amount"] == "0.18"
    sheet, _ = page_of(admin_client, march)
    shown = [(line["type"], ungroup(line["quantity"]), ungroup(line["amount"])) for line in sheet.lines]
    assert shown == [(row["line type"], row["quantity"], row["amount"]) for row in rows]
    summary = next(row for row in finance_summary(period=MARCH) if row.number == march.number)
    assert summary.provider_cost == sum(D(row["amount"]) for row in rows)  # every usage line, tiers included
