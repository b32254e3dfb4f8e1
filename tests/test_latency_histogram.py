"""Latency percentiles from rollups: the buckets, the interpolation, the rollup SQL that fills
them, the migration that backfills them, and the synthetic usage command."""

import importlib
import math
from datetime import UTC, datetime, timedelta

import pytest
from django.apps import apps
from django.core.management import call_command
from django.db import connection
from hypothesis import given
from hypothesis import strategies as st

from billing import latency
from billing.models import UsageRecord, UsageRollup, UsageRollupDay
from billing.services import usage_rollup
from tests.billing_fixtures import at, save, usage

DAY = datetime(2024, 5, 6, tzinfo=UTC).date()


def test_the_buckets_cover_every_latency_once():
    assert latency.BUCKETS[0].lower == 0
    for before, after in zip(latency.BUCKETS, latency.BUCKETS[1:], strict=False):
        assert before.upper == after.lower
    assert latency.BUCKETS[-1].upper is None
    assert [latency.bucket_of(ms) for ms in (0, 49, 50, 99, 60_000, 10**9)] == [0, 0, 1, 1, 15, 15]
    assert set(latency.FIELDS) <= {f.name for f in UsageRollup._meta.get_fields()}


def test_a_percentile_is_interpolated_inside_its_bucket():
    counts = [0] * len(latency.BUCKETS)
    counts[latency.bucket_of(120)] = 10  # ten requests between 100 and 200 ms
    assert latency.percentile(counts, 0.5).ms == pytest.approx(150)
    assert latency.percentile(counts, 0.1).ms == pytest.approx(110)
    counts[-1] = 90
    p95 = latency.percentile(counts, 0.95)
    assert p95.open_ended
    assert str(p95) == "≥ 60,000 ms"
    assert latency.percentile([0] * len(latency.BUCKETS), 0.5) is None
    with pytest.raises(ValueError, match="bucket counts"):
        latency.percentile([1, 2], 0.5)


@given(st.lists(st.integers(min_value=0, max_value=120_000), min_size=1, max_size=300), st.floats(0.01, 1.0))
def test_the_estimate_lies_in_the_bucket_of_the_true_percentile(values, fraction):
    counts = [0] * len(latency.BUCKETS)
    for value in values:
        counts[latency.bucket_of(value)] += 1
    ordered = sorted(values)
    true = ordered[max(1, math.ceil(fraction * len(values))) - 1]  # the first value whose rank reaches it
    bucket = latency.BUCKETS[latency.bucket_of(true)]
    estimate = latency.percentile(counts, fraction)
    assert bucket.lower <= estimate.ms <= (bucket.upper if bucket.upper is not None else bucket.lower)


@pytest.mark.django_db
def test_the_rollup_counts_each_request_in_its_latency_bucket(alice, catalog):
    records = []
    for index, ms in enumerate([3, 60, 60, 140, 999, 1000, 45_000, 75_000]):
        record = usage(alice, catalog["gpt"], at(DAY, 1, index), input_tokens=10, output_tokens=1)
        record.latency_ms = ms
        records.append(record)
    save(*records)
    usage_rollup(since=DAY, until=DAY, now=datetime(2024, 5, 10, tzinfo=UTC))
    row = UsageRollup.objects.get(day=DAY)
    counts = {name: getattr(row, name) for name in latency.FIELDS if getattr(row, name)}
    assert counts == {
        "lat_lt_50": 1,
        "lat_lt_100": 2,
        "lat_lt_200": 1,
        "lat_lt_1000": 1,
        "lat_lt_1500": 1,
        "lat_lt_60000": 1,
        "lat_ge_60000": 1,
    }
    assert sum(counts.values()) == row.requests


@pytest.mark.django_db
def test_the_migration_fills_the_buckets_of_existing_rollups_without_touching_their_sums(alice, bob, catalog):
    records = []
    for index, (tenant, ms) in enumerate([(alice, 70), (alice, 700), (bob, 7000)]):
        record = usage(tenant, catalog["gpt"], at(DAY, 2, index), input_tokens=100, output_tokens=10)
        record.latency_ms = ms
        records.append(record)
    record = usage(alice, catalog["gpt"], at(DAY, 3), status_code=502, error_type="upstream_error", priced=False)
    record.latency_ms = 20
    save(*records, record)
    usage_rollup(since=DAY, until=DAY, now=datetime(2024, 5, 10, tzinfo=UTC))
    before = list(UsageRollup.objects.order_by("pk").values("pk", "requests", "cost", "input_tokens"))
    UsageRollup.objects.update(**dict.fromkeys(latency.FIELDS, 0))  # as the rows were before 0006

    migration = importlib.import_module("billing.migrations.0006_rollup_latency_histogram")
    with connection.schema_editor() as editor:
        migration.backfill(apps, editor)

    assert list(UsageRollup.objects.order_by("pk").values("pk", "requests", "cost", "input_tokens")) == before
    for row in UsageRollup.objects.all():
        filled = [getattr(row, name) for name in latency.FIELDS]
        assert sum(filled) == row.requests
    alice_ok = UsageRollup.objects.get(tenant=alice, status_code=200)
    assert (alice_ok.lat_lt_100, alice_ok.lat_lt_750) == (1, 1)
    assert UsageRollup.objects.get(tenant=bob).lat_lt_10000 == 1
    assert UsageRollup.objects.get(tenant=alice, status_code=502).lat_lt_50 == 1


@pytest.mark.django_db(transaction=True)
def test_generate_usage_writes_exactly_n_records_and_rolls_up_the_closed_days(catalog):
    call_command("generate_usage", "--records", "2500", "--days", "5", "--tenants", "3", "--seed", "3")
    assert UsageRecord.objects.count() == 2500
    now = datetime.now(UTC)
    closed = UsageRollupDay.objects.filter(rolled_up_at__isnull=False)
    assert closed.exists()
    assert not closed.filter(day=now.date()).exists()  # today stays raw
    in_rollups = sum(UsageRollup.objects.values_list("requests", flat=True))
    before_today = UsageRecord.objects.filter(
        created_at__lt=datetime.combine(now.date(), datetime.min.time(), tzinfo=UTC)
    ).count()
    assert in_rollups == before_today
    assert UsageRecord.objects.filter(created_at__gte=now - timedelta(days=5, minutes=1)).count() == 2500
    assert UsageRecord.objects.filter(cache_hit=True, cost=0, price__isnull=False).exists()
    assert UsageRecord.objects.values("tenant").distinct().count() == 3
