"""Usage records partitioned by month (PostgreSQL): the migration from the plain table keeps every
row of a million, partitions are created ahead and take late months' records from the default
one, a replayed write stays exactly-once, foreign keys hold, and retention drops whole months."""

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.db.models import ProtectedError

from billing.models import Invoice, UsageRecord, UsageRollupDay
from billing.periods import next_month
from billing.pricing import Price, Tokens
from billing.services import (
    invoices_generate,
    usage_partition_ensure,
    usage_partition_months,
    usage_partitioned,
    usage_partitions_ensure,
    usage_record_upsert,
    usage_retention_apply,
    usage_rollup,
)
from billing.services.partitions import DEFAULT_PARTITION, usage_partition_name
from gateway.metered import Metered
from tenants.services import api_key_create
from tests.billing_fixtures import at, save, usage
from tests.conftest import make_tenant

pytestmark = pytest.mark.skipif(
    settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql",
    reason="usage records are partitioned on PostgreSQL only",
)

MILLION = 1_000_000
FIRST_RECORD = datetime(2025, 11, 1, tzinfo=UTC)
# One record every 33 s from FIRST_RECORD: a million records over 13 months (382 days).
INSERT_MILLION = """
INSERT INTO billing_usagerecord (
    request_id, created_at, tenant_id, model, provider, upstream_model, endpoint, status_code, error_type,
    input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, cost, latency_ms,
    streamed, estimated, cache_hit
)
SELECT 'mig-' || i, %s::timestamptz + i * interval '33 seconds', %s, 'gpt-test', 'openai', 'gpt-4o-mini',
    CASE WHEN i %% 3 = 0 THEN 'messages' ELSE 'chat' END, CASE WHEN i %% 50 = 0 THEN 429 ELSE 200 END,
    CASE WHEN i %% 50 = 0 THEN 'upstream_rate_limit' ELSE '' END,
    1000 + i %% 997, i %% 200, 0, i %% 389, (i %% 1009) * 0.000000123457, i %% 2000, i %% 2 = 0, false, false
FROM generate_series(0, %s - 1) AS i
"""
TOTALS = """
SELECT COUNT(*), SUM(cost), SUM(input_tokens), SUM(cached_input_tokens), SUM(output_tokens), SUM(latency_ms),
    COUNT(DISTINCT request_id), MIN(id), MAX(id), SUM(id),
    SUM(hashtext(request_id || created_at::text || status_code || error_type || endpoint))
FROM billing_usagerecord
"""


def partition_of(record_id: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT tableoid::regclass::text FROM billing_usagerecord WHERE id = %s", [record_id])
        return cursor.fetchone()[0]


def table_exists(name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
        return cursor.fetchone()[0]


def metered(tenant, request_id: str, created_at: datetime, *, output=50, error_type="", status=200) -> Metered:
    return Metered(
        request_id=request_id,
        created_at=created_at,
        tenant_id=tenant.id,
        api_key_id=None,
        model="gpt-test",
        provider="openai",
        upstream_model="gpt-4o-mini",
        endpoint="chat",
        status_code=status,
        error_type=error_type,
        tokens=Tokens(input=1000, output=output),
        price_id=None,
        price=Price(input_per_1m=Decimal("0.15"), output_per_1m=Decimal("0.60")),
        latency_ms=12,
        streamed=False,
        estimated=False,
        tenant_slug=tenant.slug,
        deployment_id=None,
    )


# --- the migration ---------------------------------------------------------------------------


def _partition_migration(executor: MigrationExecutor) -> tuple[str, str]:
    """(this migration, the one before it), by name: the lead may renumber it."""
    [node] = [key for key in executor.loader.graph.nodes if key[1].endswith("usage_partitioned_by_month")]
    [parent] = [p for p in executor.loader.graph.node_map[node].parents if p.key[0] == "billing"]
    return node, parent.key


def bulk_load(cursor, sql: str, params: list) -> None:
    """Run a bulk INSERT the way a bulk load is done: the table's indexes (its primary key aside)
    and foreign keys dropped first, and put back as they were after (one build, one check each,
    instead of a million index insertions and deferred trigger events)."""
    cursor.execute(
        "SELECT c.relname, pg_get_indexdef(x.indexrelid), con.conname, pg_get_constraintdef(con.oid) "
        "FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid "
        "LEFT JOIN pg_constraint con ON con.conindid = x.indexrelid AND con.conrelid = x.indrelid "
        "WHERE x.indrelid = 'billing_usagerecord'::regclass AND NOT x.indisprimary"
    )
    indexes = cursor.fetchall()
    cursor.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = 'billing_usagerecord'::regclass AND contype = 'f'"
    )
    foreign_keys = cursor.fetchall()
    for name, _ in foreign_keys:
        cursor.execute(f'ALTER TABLE billing_usagerecord DROP CONSTRAINT "{name}"')
    for index, _, constraint, _ in indexes:
        cursor.execute(
            f'ALTER TABLE billing_usagerecord DROP CONSTRAINT "{constraint}"' if constraint else f'DROP INDEX "{index}"'
        )
    cursor.execute(sql, params)
    for _, definition, constraint, constraint_definition in indexes:
        cursor.execute(
            f'ALTER TABLE billing_usagerecord ADD CONSTRAINT "{constraint}" {constraint_definition}'
            if constraint
            else definition
        )
    for name, definition in foreign_keys:
        cursor.execute(f'ALTER TABLE billing_usagerecord ADD CONSTRAINT "{name}" {definition}')


def _migrate(targets) -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)


@pytest.mark.django_db(transaction=True)
def test_the_migration_keeps_a_million_records_their_ids_and_totals():
    tenant = make_tenant("million")
    executor = MigrationExecutor(connection)
    mine, before = _partition_migration(executor)
    leaves = executor.loader.graph.leaf_nodes()
    executor.migrate([before])
    try:
        assert not usage_partitioned()
        with connection.cursor() as cursor:
            bulk_load(cursor, INSERT_MILLION, [FIRST_RECORD, tenant.id, MILLION])
            cursor.execute(TOTALS)
            totals = cursor.fetchone()
        assert totals[0] == totals[6] == MILLION

        _migrate(leaves)

        assert usage_partitioned()
        with connection.cursor() as cursor:
            cursor.execute(TOTALS)
            assert cursor.fetchone() == totals
            cursor.execute(f"SELECT COUNT(*) FROM {DEFAULT_PARTITION}")  # noqa: S608
            assert cursor.fetchone()[0] == 0  # every month with records has its own partition
        months = usage_partition_months()
        this_month = datetime.now(UTC).date().replace(day=1)
        assert months[0] == date(2025, 11, 1)
        assert months[-1] >= this_month
        assert {date(2025, 11, 1), date(2026, 6, 1), date(2026, 11, 1), this_month} <= set(months)
        assert partition_of(totals[7]) == usage_partition_name(date(2025, 11, 1))

        # The ORM goes on writing, with ids after the copied ones, and request ids stay unique.
        record = save(usage(tenant, _model(), at(date(2026, 3, 5))))[0]
        assert record.id > totals[8]
        assert partition_of(record.id) == usage_partition_name(date(2026, 3, 1))
        with pytest.raises(IntegrityError), transaction.atomic():
            UsageRecord.objects.create(**_copy_of("mig-5"))
    finally:
        _migrate(leaves)  # whatever happened, the next tests find the schema they expect


def _model():
    from tenants.models import CatalogModel

    return CatalogModel.objects.get_or_create(name="gpt-test", defaults={"provider": "openai"})[0]


def _copy_of(request_id: str) -> dict:
    fields = UsageRecord.objects.filter(request_id=request_id).values()[0]
    fields.pop("id")
    return fields


# --- partitions ahead, late months, replays, foreign keys -----------------------------------


@pytest.mark.django_db
def test_partitions_are_created_ahead_once_and_a_late_month_takes_its_records_from_the_default(alice, catalog):
    now = datetime(2031, 5, 17, tzinfo=UTC)
    expected = [usage_partition_name(date(2031, m, 1)) for m in (5, 6, 7)]
    assert usage_partitions_ensure(now=now) == expected
    assert usage_partitions_ensure(now=now) == []
    assert all(table_exists(name) for name in expected)

    # Records of a month without a partition go to the default one: no insert fails.
    late = save(*(usage(alice, catalog["gpt"], at(date(2031, 9, day)), input_tokens=10) for day in (1, 15, 30)))
    kept = save(usage(alice, catalog["gpt"], at(date(2031, 10, 1), 0, 0)))[0]
    assert {partition_of(r.id) for r in [*late, kept]} == {DEFAULT_PARTITION}

    assert usage_partition_ensure(month=date(2031, 9, 1))  # moves September's rows, and only them
    assert {partition_of(r.id) for r in late} == {usage_partition_name(date(2031, 9, 1))}
    assert partition_of(kept.id) == DEFAULT_PARTITION
    assert UsageRecord.objects.filter(id__in=[r.id for r in late]).count() == 3
    assert not usage_partition_ensure(month=date(2031, 9, 1))


@pytest.mark.django_db
def test_a_replayed_write_is_recorded_once_and_the_requests_own_replaces_an_interrupted_one(alice):
    started = datetime(2031, 2, 28, 23, 59, 59, 999_999, tzinfo=UTC)  # a month's last microsecond
    interrupted = usage_record_upsert(
        metered=metered(alice, "req-replay", started, error_type="interrupted", status=0), replaceable="interrupted"
    )
    own = usage_record_upsert(metered=metered(alice, "req-replay", started), replaceable="interrupted")
    replay = usage_record_upsert(metered=metered(alice, "req-replay", started, output=999), replaceable="interrupted")

    assert (interrupted.written, own.written, replay.written) == (True, True, False)
    record = UsageRecord.objects.get(request_id="req-replay")
    assert (record.error_type, record.status_code, record.output_tokens) == ("", 200, 50)
    assert replay.cost == own.cost == record.cost == Decimal("0.00018")
    assert record.created_at == started
    assert partition_of(record.id) == DEFAULT_PARTITION  # February 2031 has no partition here


@pytest.mark.django_db
def test_foreign_keys_from_the_partitioned_table_still_hold(alice, catalog):
    usage_partition_ensure(month=date(2031, 3, 1))
    key, _ = api_key_create(tenant=alice, name="partitioned")
    record = usage(alice, catalog["gpt"], at(date(2031, 3, 3)))
    record.api_key = key
    record = save(record)[0]
    assert partition_of(record.id) == usage_partition_name(date(2031, 3, 1))

    key.delete()  # SET_NULL
    record.refresh_from_db()
    assert record.api_key_id is None
    with pytest.raises(ProtectedError):
        alice.delete()
    with transaction.atomic():
        UsageRecord.objects.filter(id=record.id).update(tenant_id=alice.id + 10_000)
        with pytest.raises(IntegrityError):
            connection.check_constraints()  # the deferred foreign key, checked now
        transaction.set_rollback(True)


# --- retention -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_retention_drops_whole_months_rolled_up_and_invoiced_only(alice, bob, catalog, settings):
    settings.BILLING_USAGE_RETENTION_DAYS = 100
    gpt = catalog["gpt"]
    months = [date(2024, m, 1) for m in (1, 2, 3)]
    for month in months[:2]:
        usage_partition_ensure(month=month)  # March's records stay in the default partition
    for month in months:
        save(*(usage(alice, gpt, at(month + timedelta(days=d)), input_tokens=100) for d in range(5)))
        save(usage(bob, gpt, at(month + timedelta(days=9)), input_tokens=10))
    now = datetime(2024, 7, 20, tzinfo=UTC)  # cutoff: April 11th, after every month above
    for month in months:
        invoices_generate(period=month, finalize=month != date(2024, 2, 1), now=now)  # February stays a draft
    # January gets a record its rollup has not seen: not current, so January stays too.
    late = save(usage(alice, gpt, at(date(2024, 1, 20)), input_tokens=1))[0]

    dropped = usage_retention_apply(now=now)

    assert dropped == 6
    assert not table_exists(usage_partition_name(date(2024, 3, 1)))  # created from the default, then dropped
    assert table_exists(usage_partition_name(date(2024, 1, 1)))
    assert table_exists(usage_partition_name(date(2024, 2, 1)))
    assert not UsageRecord.objects.filter(
        created_at__gte=at(date(2024, 3, 1), 0), created_at__lt=at(date(2024, 4, 1), 0)
    ).exists()
    assert UsageRecord.objects.count() == 13
    assert UsageRollupDay.objects.filter(day__month=3, pruned=True).count() == 6
    assert not UsageRollupDay.objects.filter(day__month__in=[1, 2], pruned=True).exists()
    assert Invoice.objects.filter(period=date(2024, 3, 1), status=Invoice.Status.FINALIZED).count() == 2

    # Once January's late record is rolled up and February finalized, both go.
    usage_rollup(since=date(2024, 1, 1), until=date(2024, 1, 31), now=now)
    invoices_generate(period=date(2024, 2, 1), finalize=True, now=now)
    assert usage_retention_apply(now=now) == 13
    assert not UsageRecord.objects.filter(id=late.id).exists()
    assert set(usage_partition_months()).isdisjoint(months)
    assert usage_retention_apply(now=now) == 0


@pytest.mark.django_db
def test_the_command_creates_the_partitions_ahead_and_lists_them(alice, catalog):
    this_month = datetime.now(UTC).date().replace(day=1)
    save(usage(alice, catalog["gpt"], at(date(2031, 9, 1))))  # a month without a partition

    out = StringIO()
    call_command("usage_partitions", "--ahead", "5", stdout=out)

    lines = out.getvalue().splitlines()
    assert f"created {usage_partition_name(add_months(this_month, 5))}" in lines
    assert any(line.startswith(f"{usage_partition_name(this_month)}: ") for line in lines)  # an estimate
    assert lines[-1] == f"{DEFAULT_PARTITION}: 1 records (a month without a partition)"
    assert table_exists(usage_partition_name(add_months(this_month, 5)))
    with pytest.raises(CommandError, match="--ahead"):
        call_command("usage_partitions", "--ahead", "-1")


def add_months(month: date, n: int) -> date:
    for _ in range(n):
        month = next_month(month)
    return month


@pytest.mark.django_db
def test_the_daily_partition_run_analyzes_the_parent_for_its_group_statistics(alice, catalog):
    """Migration 0017's statistics on the grouped columns live on the partitioned parent, which
    autovacuum never analyzes: the daily partition run does, so they follow the records."""

    def groups() -> dict | None:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT d.stxdndistinct::text FROM pg_statistic_ext s "
                "LEFT JOIN pg_statistic_ext_data d ON d.stxoid = s.oid "
                "WHERE s.stxname = 'billing_usagerecord_group_ndistinct'"
            )
            row = cursor.fetchone()
        assert row is not None  # the statistics object exists
        return row[0]

    now = datetime.now(UTC)
    models = [catalog["gpt"], catalog["claude"]]
    save(*(usage(alice, models[n % 2], now - timedelta(minutes=n), status_code=200) for n in range(40)))
    before = groups()
    usage_partitions_ensure(now=now)
    after = groups()
    assert after is not None  # built from the records now in the table
    assert after != before
