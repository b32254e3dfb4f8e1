"""Daily rollups: SQL sums per tenant, day, model, endpoint, outcome and price; idempotent; late
records picked up; /v1/usage from rollups plus raw records, identical to raw records alone."""

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Count, Sum
from django.db.models.functions import TruncDate
from django.test.utils import CaptureQueriesContext

from billing.models import Invoice, UsageRecord, UsageRollup, UsageRollupDay
from billing.selectors import usage_summary
from billing.services import BillingError, invoices_generate, usage_retention_apply, usage_rollup
from tests.billing_fixtures import add_price, at, save, usage, usage_summary_raw

MARCH = [date(2024, 3, d) for d in range(1, 32)]
APRIL_10 = datetime(2024, 4, 10, 8, tzinfo=UTC)
KEY = ["tenant_id", "model", "endpoint", "status_code", "error_type", "cache_hit", "price_id"]
SUMS = ["input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens", "cost"]


def some_usage(alice, bob, catalog, days):
    gpt, claude = catalog["gpt"], catalog["claude"]
    records = []
    for i, day in enumerate(days):
        records += [
            usage(alice, gpt, at(day, 1), input_tokens=1200 + i, cached=200, output_tokens=50),
            usage(alice, gpt, at(day, 2), input_tokens=900, output_tokens=70, endpoint="messages", streamed=True),
            usage(alice, claude, at(day, 3), input_tokens=5000, cached=3000, cache_write=1000, output_tokens=400),
            usage(alice, gpt, at(day, 4), input_tokens=1200, output_tokens=50, cache_hit=True),
            usage(alice, gpt, at(day, 5), status_code=429, error_type="upstream_rate_limit", priced=False),
            usage(bob, claude, at(day, 23, 59), input_tokens=10, output_tokens=10),
            usage(bob, gpt, at(day, 0, 0), status_code=502, error_type="upstream_error", input_tokens=20, priced=False),
        ]
    return save(*records)


def raw_by_key(day=None):
    qs = UsageRecord.objects.annotate(day=TruncDate("created_at", tzinfo=UTC))
    if day:
        qs = qs.filter(day=day)
    rows = qs.values("day", *KEY).annotate(requests=Count("id"), **{name: Sum(name) for name in SUMS}).order_by()
    return {tuple(row[k] for k in ["day", *KEY]): {n: row[n] for n in ["requests", *SUMS]} for row in rows}


def rollup_by_key():
    rows = UsageRollup.objects.values("day", *KEY, "requests", *SUMS)
    return {tuple(row[k] for k in ["day", *KEY]): {n: row[n] for n in ["requests", *SUMS]} for row in rows}


def rollup_rows():
    return sorted(UsageRollup.objects.values_list())


@pytest.mark.django_db
def test_the_rollup_sums_every_key_exactly_like_the_raw_records(alice, bob, catalog):
    some_usage(alice, bob, catalog, MARCH[:3])
    result = usage_rollup(since=MARCH[0], until=MARCH[-1], now=APRIL_10)
    assert result.days == MARCH[:3]
    assert result.records == UsageRecord.objects.count() == 21
    assert rollup_by_key() == raw_by_key()
    row = UsageRollup.objects.get(day=MARCH[0], tenant=alice, model="gpt-test", endpoint="messages")
    assert (row.requests, row.streamed, row.latency_ms) == (1, 1, 100)
    assert UsageRollupDay.objects.get(day=MARCH[1]).records == 7


@pytest.mark.django_db
def test_running_the_rollup_again_changes_no_row(alice, bob, catalog):
    some_usage(alice, bob, catalog, MARCH[:2])
    usage_rollup(since=MARCH[0], now=APRIL_10)
    before = rollup_rows()
    markers = list(UsageRollupDay.objects.values_list())
    again = usage_rollup(since=MARCH[0], now=APRIL_10)
    assert again.days == []
    assert rollup_rows() == before  # ids included
    assert list(UsageRollupDay.objects.values_list()) == markers


@pytest.mark.django_db
def test_a_late_record_makes_the_next_run_do_its_day_again(alice, bob, catalog):
    some_usage(alice, bob, catalog, MARCH[:3])
    usage_rollup(since=MARCH[0], now=APRIL_10)
    untouched = sorted(UsageRollup.objects.exclude(day=MARCH[1]).values_list())
    save(usage(alice, catalog["azure"], at(MARCH[1], 9), input_tokens=1_000_000, output_tokens=1))
    result = usage_rollup(since=MARCH[0], now=APRIL_10)
    assert result.days == [MARCH[1]]
    assert rollup_by_key() == raw_by_key()
    assert sorted(UsageRollup.objects.exclude(day=MARCH[1]).values_list()) == untouched


@pytest.mark.django_db
def test_today_is_left_to_the_raw_records_and_the_default_window_is_the_lookback(alice, bob, catalog, settings):
    settings.BILLING_ROLLUP_LOOKBACK_DAYS = 5
    now = datetime(2024, 3, 20, 15, tzinfo=UTC)
    some_usage(alice, bob, catalog, [date(2024, 3, 10), date(2024, 3, 16), date(2024, 3, 19), date(2024, 3, 20)])
    result = usage_rollup(now=now, until=date(2024, 3, 31))
    assert result.days == [date(2024, 3, 16), date(2024, 3, 19)]
    assert not UsageRollup.objects.filter(day=date(2024, 3, 20)).exists()


@pytest.mark.django_db
def test_the_rollup_runs_as_many_queries_for_many_records_as_for_few(alice, bob, catalog):
    def queries(day, copies):
        for _ in range(copies):
            some_usage(alice, bob, catalog, [day])
        with CaptureQueriesContext(connection) as ctx:
            usage_rollup(since=day, until=day, now=APRIL_10)
        return len(ctx.captured_queries)

    assert queries(MARCH[0], 1) == queries(MARCH[1], 40)
    assert UsageRollup.objects.filter(day=MARCH[1]).aggregate(n=Sum("requests"))["n"] == 280


# --- /v1/usage from rollups plus raw records -----------------------------------------------


@pytest.mark.django_db
def test_usage_summary_is_exactly_what_the_raw_records_alone_give(alice, bob, catalog):
    today = datetime.now(UTC).date()
    days = [today - timedelta(days=n) for n in (40, 9, 8, 3, 2, 1, 0)]
    some_usage(alice, bob, catalog, days)
    # Models whose names sort differently by collation and by code point, for the ORDER BY.
    for name in ("Zeta-1", "alpha.2", "alpha-1"):
        model = type(catalog["gpt"]).objects.create(name=name, provider="openai")
        add_price(model, datetime(2020, 1, 1, tzinfo=UTC), input_per_1m="1", output_per_1m="2")
        save(usage(alice, model, at(days[2], 6), input_tokens=7, output_tokens=3))
    usage_rollup(since=days[0], until=days[3], now=datetime.now(UTC))  # days 1 and 2 ago stay raw
    assert UsageRollupDay.objects.filter(day__in=days[:4]).count() == 4
    ranges = [(days[0], today), (days[1], days[2]), (days[3], today), (today, today), (days[4], days[5])]
    for tenant in (alice, bob):
        for start, end in ranges:
            assert usage_summary(tenant_id=tenant.id, start=start, end=end) == usage_summary_raw(
                tenant_id=tenant.id, start=start, end=end
            ), (tenant, start, end)
    empty = usage_summary(tenant_id=bob.id, start=today + timedelta(days=1), end=today + timedelta(days=2))
    assert empty["totals"] == {
        "requests": 0,
        "errors": 0,
        "cache_hits": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "cost": "0.00",
    }
    assert empty["by_model"] == empty["by_endpoint"] == empty["by_error_type"] == []


@pytest.mark.django_db
def test_usage_summary_of_past_days_is_read_from_the_rollups(alice, bob, catalog):
    some_usage(alice, bob, catalog, MARCH[:5])
    expected = usage_summary_raw(tenant_id=alice.id, start=MARCH[0], end=MARCH[30])
    usage_rollup(since=MARCH[0], until=MARCH[30], now=APRIL_10)
    UsageRecord.objects.filter(created_at__lt=at(MARCH[3], 0))._raw_delete(using="default")
    assert usage_summary(tenant_id=alice.id, start=MARCH[0], end=MARCH[30]) == expected
    assert expected["totals"]["requests"] == 25
    assert expected["by_error_type"] == [{"error_type": "upstream_rate_limit", "requests": 5}]


# --- retention -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_retention_deletes_old_raw_records_of_invoiced_months_only(alice, bob, catalog, settings):
    settings.BILLING_USAGE_RETENTION_DAYS = 0
    feb, mar = date(2024, 2, 10), date(2024, 3, 10)
    some_usage(alice, bob, catalog, [feb, mar])
    now = datetime(2024, 7, 20, tzinfo=UTC)
    assert usage_retention_apply(now=now) == 0  # off by default

    settings.BILLING_USAGE_RETENTION_DAYS = 30
    with pytest.raises(BillingError, match="at least"):
        usage_retention_apply(now=now)

    settings.BILLING_USAGE_RETENTION_DAYS = 100
    invoices_generate(period=date(2024, 2, 1), finalize=True, now=now)
    invoices_generate(period=date(2024, 3, 1), now=now)  # March stays a draft
    summary = usage_summary(tenant_id=alice.id, start=date(2024, 2, 1), end=date(2024, 3, 31))
    assert usage_retention_apply(now=now, batch_size=3) == 7
    assert not UsageRecord.objects.filter(created_at__lt=at(date(2024, 3, 1), 0)).exists()
    assert UsageRecord.objects.count() == 7
    assert UsageRollupDay.objects.get(day=feb).pruned
    assert usage_summary(tenant_id=alice.id, start=date(2024, 2, 1), end=date(2024, 3, 31)) == summary
    usage_rollup(since=feb, until=feb, now=now)  # a pruned day is never redone from nothing
    assert UsageRollup.objects.filter(day=feb).aggregate(n=Sum("requests"))["n"] == 7
    assert Invoice.objects.get(tenant=alice, period=date(2024, 2, 1)).provider_cost > Decimal(0)
