"""The daily summaries (billing.models.UsageTenantDay, UsageModelDay): written with each day's
rollups, read by the dashboard and analytics, and giving exactly the figures the rollups give.

Generated usage: five tenants (two with projects, one project deleted since), three models with a
price change in the range, four endpoints, errors of several kinds, response-cache hits, cached
prompts and cache writes, spread latencies, over twelve closed days and today. Each figure is
computed twice, from the summaries and (their days marked "not current", which the readers honour)
from the rollups, and compared whole; the totals are checked against the raw records too.
"""

import random
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Sum
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from billing import latency
from billing.models import (
    Plan,
    Subscription,
    UsageModelDay,
    UsageRecord,
    UsageRollup,
    UsageRollupDay,
    UsageTenantDay,
)
from billing.services import usage_rollup, usage_rollup_day
from billing.services.rollups import _rollup_insert_sql
from console import analytics
from console.analytics import budget_lines, dashboard_summary, project_shares, tenant_comparison, tenant_overview
from tenants.models import Project
from tests.billing_fixtures import add_price, save, usage
from tests.conftest import make_tenant
from tests.dashboard_fixtures import oracle, today

DAYS = 12
# (400, "") and (500, ""): errors by status alone.
ERRORS = [
    (429, "upstream_rate_limit"),
    (502, "upstream_error"),
    (400, "upstream_invalid_request"),
    (400, ""),
    (500, ""),
]
ENDPOINTS = ["chat", "messages", "responses", "embeddings"]


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _records(rng: random.Random, tenants, projects, models, day: date, count: int) -> list[UsageRecord]:
    records = []
    now = datetime.now(UTC)
    for n in range(count):
        tenant = rng.choice(tenants)
        model = rng.choice(models)
        at = _day_start(day) + timedelta(seconds=rng.randrange(86_400))
        if at >= now:  # today: records up to now only
            at = _day_start(day) + (now - _day_start(day)) * rng.random()
        failed = rng.random() < 0.1
        status, error = rng.choice(ERRORS) if failed else (200, "")
        cache_hit = not failed and rng.random() < 0.1
        prompt = rng.randrange(50, 5000)
        write = rng.choice([0, 0, 0, prompt // 4]) if model.name == "claude-test" else 0
        record = usage(
            tenant,
            model,
            at,
            input_tokens=0 if failed else prompt,
            cached=0 if failed else rng.choice([0, 0, prompt // 3]),
            cache_write=0 if failed else write,
            cache_write_1h=0 if failed else write // 2,
            output_tokens=0 if failed else rng.randrange(1, 900),
            status_code=status,
            error_type=error,
            cache_hit=cache_hit,
            endpoint=rng.choice(ENDPOINTS),
            priced=not failed,
        )
        record.request_id = f"sum-{day.isoformat()}-{n:05d}"
        record.latency_ms = int(rng.lognormvariate(6.3, 1.1))
        record.project_id = rng.choice(projects.get(tenant.id, [None]))
        records.append(record)
    return records


@pytest.fixture
def world(catalog):
    rng = random.Random(15)
    business = Plan.objects.create(name="business", markup_percent=Decimal("20"))
    tenants = [make_tenant(f"t{n}", plan=business if n % 2 else None) for n in range(5)]
    Subscription.objects.filter(tenant=tenants[0]).update(monthly_budget=Decimal("0.05"))
    projects = {
        tenants[0].id: [Project.objects.create(tenant=tenants[0], name=name).id for name in ("web", "batch")] + [None],
        tenants[1].id: [Project.objects.create(tenant=tenants[1], name=name).id for name in ("web", "gone")],
    }
    first = today() - timedelta(days=DAYS)
    # A new price for gpt half way: two price rows of one model in the range.
    add_price(catalog["gpt"], _day_start(first + timedelta(days=DAYS // 2)), input_per_1m="0.20", output_per_1m="0.80")
    models = list(catalog.values())
    records = []
    for offset in range(DAYS + 1):
        records += _records(rng, tenants, projects, models, first + timedelta(days=offset), rng.randrange(40, 90))
    save(*records)
    usage_rollup(since=first, until=today() - timedelta(days=1))
    Project.objects.filter(name="gone").delete()  # its rows keep the id: "(no project)" on every page
    return {"tenants": tenants, "first": first}


def _tables_read(capture: CaptureQueriesContext) -> set[str]:
    sql = " ".join(query["sql"] for query in capture.captured_queries)
    tables = {"billing_usagetenantday", "billing_usagemodelday", "billing_usagerecord"}
    found = {table for table in tables if f'"{table}"' in sql}
    if '"billing_usagerollup"' in sql:
        found.add("billing_usagerollup")
    return found


def _figures(start: date, end: date, tenant_id: int) -> dict:
    return {
        "dashboard": dashboard_summary(start=start, end=end),
        "comparison": tenant_comparison(start=start, end=end),
        "projects": project_shares(start=start, end=end, qualified=True),
        "overview": tenant_overview(tenant_id=tenant_id, start=start, end=end),
    }


def _period_figures(figures: dict) -> dict:
    """The figures of the period alone: not the tenant page's latest errors and keys' month
    spend, which it reads from the raw records whatever the period."""
    overview = figures["overview"]
    period = (overview.totals, overview.by_model, overview.by_project, overview.daily, overview.latency)
    return {**figures, "overview": (*period, overview.savings, overview.errors_by_type)}


def _from_rollups(start: date, end: date, tenant_id: int) -> dict:
    """The same figures with every day's summaries taken for not current: read from the rollups."""
    markers = list(UsageRollupDay.objects.values_list("day", "summarized_at"))
    UsageRollupDay.objects.update(summarized_at=None)
    try:
        with CaptureQueriesContext(connection) as capture:
            figures = _figures(start, end, tenant_id)
        assert "billing_usagetenantday" not in _tables_read(capture)
        assert "billing_usagemodelday" not in _tables_read(capture)
        return figures
    finally:
        for day, summarized_at in markers:
            UsageRollupDay.objects.filter(day=day).update(summarized_at=summarized_at)


def _assert_same_figures(world, start: date, end: date) -> dict:
    tenant_id = world["tenants"][0].id
    with CaptureQueriesContext(connection) as capture:
        summarized = _figures(start, end, tenant_id)
    assert {"billing_usagetenantday", "billing_usagemodelday"} <= _tables_read(capture)
    expected = _from_rollups(start, end, tenant_id)
    for name, figures in summarized.items():
        assert figures == expected[name], name
    return summarized


def _assert_summaries_sum_the_rollups(day: date) -> None:
    rollups = UsageRollup.objects.filter(day=day)
    sums = ["requests", "input_tokens", "output_tokens", "cost"]
    expected = rollups.aggregate(**{name: Sum(name) for name in sums})
    for model in (UsageTenantDay, UsageModelDay):
        assert model.objects.filter(day=day).aggregate(**{name: Sum(name) for name in sums}) == expected, model
    model_day = UsageModelDay.objects.filter(day=day)
    for name in ["cached_input_tokens", "cache_write_tokens", "cache_write_1h_tokens", *latency.FIELDS]:
        assert model_day.aggregate(n=Sum(name)) == rollups.aggregate(n=Sum(name)), name
    tenant_day = UsageTenantDay.objects.filter(day=day).aggregate(errors=Sum("errors"), hits=Sum("cache_hits"))
    errors = rollups.exclude(status_code__lt=400, error_type="").aggregate(n=Sum("requests"))["n"]
    hits = rollups.filter(cache_hit=True).aggregate(n=Sum("requests"))["n"]
    assert (tenant_day["errors"], tenant_day["hits"]) == (errors, hits)
    marker = UsageRollupDay.objects.get(day=day)
    assert marker.summarized_at == marker.rolled_up_at is not None


@pytest.mark.django_db
def test_every_rolled_up_day_has_summaries_that_sum_its_rollups(world):
    days = sorted(UsageRollupDay.objects.values_list("day", flat=True))
    assert days == [world["first"] + timedelta(days=n) for n in range(DAYS)]
    for day in days:
        _assert_summaries_sum_the_rollups(day)
    # Coarser: one row per tenant and project, per model, endpoint, outcome and price.
    assert UsageTenantDay.objects.count() < UsageRollup.objects.count() / 2
    assert UsageModelDay.objects.count() < UsageRollup.objects.count()
    assert not UsageTenantDay.objects.filter(day=today()).exists()  # today stays raw


@pytest.mark.django_db
@pytest.mark.parametrize("days_back", [1, 6, 29, 89])
def test_the_pages_give_the_same_figures_from_summaries_as_from_rollups(world, days_back):
    start = today() - timedelta(days=days_back)
    figures = _assert_same_figures(world, start, today())
    # And what the raw records give.
    truth = oracle(start=start, end=today())
    totals = figures["dashboard"].totals
    assert (totals.requests, totals.errors, totals.cache_hits, totals.cost) == (
        truth.requests,
        truth.errors,
        truth.cache_hits,
        truth.cost,
    )
    assert totals.requests > 0


def _raw_reads(capture: CaptureQueriesContext) -> int:
    return sum('"billing_usagerecord"' in query["sql"] for query in capture.captured_queries)


@pytest.mark.django_db
@pytest.mark.parametrize("days_back", [29, 89])
def test_the_dashboards_chart_read_with_its_platform_figures_is_the_same_as_read_apart(world, days_back, monkeypatch):
    """A period that holds the chart's days: the per-model figures and the chart come from one
    aggregate per model and day (today's raw records read once for both), folded; the same
    figures as the two aggregates of a period that does not hold them."""
    start = today() - timedelta(days=days_back)
    with CaptureQueriesContext(connection) as together_capture:
        together = dashboard_summary(start=start, end=today())
    chart_days = analytics.CHART_DAYS
    monkeypatch.setattr(analytics, "CHART_DAYS", days_back + 2)  # the chart now starts before the period
    with CaptureQueriesContext(connection) as apart_capture:
        apart = dashboard_summary(start=start, end=today())
    assert _raw_reads(together_capture) == _raw_reads(apart_capture) - 1
    assert together.daily == apart.daily[-chart_days:]
    assert len(together.daily) == chart_days
    assert together.daily[-1].day == today()
    for point in together.daily[-(DAYS + 1) :]:
        truth = oracle(start=point.day, end=point.day)
        assert (point.requests, point.errors, point.cost) == (truth.requests, truth.errors, truth.cost), point.day
    assert together.daily[-1].requests > 0  # today's raw records are in it
    for name in ("totals", "errors_by_type", "savings", "latency", "top_models", "by_endpoint", "top_tenants"):
        assert getattr(together, name) == getattr(apart, name), name


@pytest.mark.django_db
@pytest.mark.parametrize(("first_day", "last_day"), [(2, DAYS - 3), (0, 3), (DAYS - 5, DAYS - 1)])
def test_a_period_before_today_and_a_tenants_own_pages_read_the_summaries_too(world, first_day, last_day):
    """Periods that end before today: the dashboard reads the month-to-date spend (budgets) with
    the period's figures when the two touch, and apart when they do not."""
    start, end = world["first"] + timedelta(days=first_day), world["first"] + timedelta(days=last_day)
    figures = _assert_same_figures(world, start, end)
    truth = oracle(start=start, end=end)
    dashboard = figures["dashboard"]
    by_tenant = {share.tenant_id: share.totals.cost for share in dashboard.top_tenants}
    assert by_tenant == truth.by_tenant
    totals = dashboard.totals
    assert (totals.requests, totals.errors, totals.cache_hits, totals.cost) == (
        truth.requests,
        truth.errors,
        truth.cache_hits,
        truth.cost,
    )
    month = oracle(start=today().replace(day=1), end=today())
    assert dashboard.budgets == budget_lines(today=today())  # the month-to-date spend read on its own
    assert [line.spend for line in dashboard.budgets] == [month.by_tenant[line.tenant_id] for line in dashboard.budgets]
    assert dashboard.budgets or today().day == 1  # t0's budget of 0.05 is spent (unless the month just began)
    tenant = world["tenants"][0]
    overview = figures["overview"]
    assert overview.totals.requests == oracle(start=start, end=end, tenant_id=tenant.id).requests
    assert [p.day for p in overview.daily] == [start + timedelta(days=n) for n in range((end - start).days + 1)]


@pytest.mark.django_db
def test_the_analytics_csv_and_the_project_csv_are_the_same_from_summaries(admin_client, world):
    url = reverse("admin:analytics")
    pages = {query: admin_client.get(f"{url}?{query}") for query in ("format=csv", "format=csv&by=project")}
    UsageRollupDay.objects.update(summarized_at=None)
    for query, page in pages.items():
        again = admin_client.get(f"{url}?{query}")
        assert page.status_code == again.status_code == 200
        assert page.content == again.content, query
    assert pages["format=csv"].content.count(b"\n") == 1 + len(world["tenants"])
    assert b",web," in pages["format=csv&by=project"].content


@pytest.mark.django_db
def test_a_redone_day_gets_its_summaries_written_again(world, catalog):
    tenant = world["tenants"][2]
    day = today() - timedelta(days=2)
    before = UsageTenantDay.objects.filter(day=day, tenant=tenant).aggregate(n=Sum("requests"))["n"] or 0
    late = usage(tenant, catalog["claude"], _day_start(day) + timedelta(hours=23), input_tokens=1000, output_tokens=10)
    save(late)
    result = usage_rollup()
    assert result.days == [day]
    assert UsageTenantDay.objects.filter(day=day, tenant=tenant).aggregate(n=Sum("requests"))["n"] == before + 1
    _assert_summaries_sum_the_rollups(day)
    _assert_same_figures(world, day, today())
    # Idempotent: again, nothing to do, the same rows.
    rows = sorted(UsageModelDay.objects.filter(day=day).values_list("id", "requests"))
    assert usage_rollup().days == []
    assert usage_rollup_day(day=day) == UsageRollupDay.objects.get(day=day).records
    assert sorted(UsageModelDay.objects.filter(day=day).values_list("id", "requests")) == rows


def _tenant_day_rows(day: date) -> list[tuple]:
    rows = UsageTenantDay.objects.filter(day=day).order_by("tenant_id", "project_id")
    return list(rows.values_list("tenant_id", "project_id", "requests", "errors", "cost"))


@pytest.mark.django_db
def test_a_pruned_day_keeps_its_summaries_and_regains_them_from_its_rollups(world):
    day = world["first"] + timedelta(days=1)
    tenant_id = world["tenants"][0].id
    figures = _period_figures(_figures(day, day, tenant_id))
    rows = _tenant_day_rows(day)
    # What retention does: the raw records go, the day is marked pruned, the rollups stay.
    since, until = _day_start(day), _day_start(day + timedelta(days=1))
    UsageRecord.objects.filter(created_at__gte=since, created_at__lt=until).delete()
    UsageRollupDay.objects.filter(day=day).update(pruned=True)
    assert usage_rollup(since=world["first"]).days == []
    assert usage_rollup_day(day=day) > 0  # not rolled up again from nothing
    assert _tenant_day_rows(day) == rows
    assert _period_figures(_figures(day, day, tenant_id)) == figures
    # A pruned day whose summaries were never built (pruned before they existed): built from its rollups.
    UsageTenantDay.objects.filter(day=day).delete()
    UsageModelDay.objects.filter(day=day).delete()
    UsageRollupDay.objects.filter(day=day).update(summarized_at=None)
    assert _period_figures(_figures(day, day, tenant_id)) == figures  # meanwhile read from the rollups
    assert usage_rollup().summarized == [day]
    _assert_summaries_sum_the_rollups(day)
    assert _period_figures(_assert_same_figures(world, day, day)) == figures


@pytest.mark.django_db
def test_days_rolled_up_without_summaries_are_read_from_rollups_until_the_next_run_builds_them(
    world, catalog, settings
):
    """As after an upgrade (or a rollup by a worker still running older code): rollups, no
    summaries. The pages read those days from the rollups; the next run builds the summaries of
    every such day, outside the lookback too, without rolling those days up again."""
    start = world["first"]
    figures = _figures(start, today(), world["tenants"][0].id)
    old = start + timedelta(days=1)
    UsageTenantDay.objects.all().delete()
    UsageModelDay.objects.all().delete()
    UsageRollupDay.objects.update(summarized_at=None)
    with CaptureQueriesContext(connection) as capture:
        assert _figures(start, today(), world["tenants"][0].id) == figures
    assert "billing_usagetenantday" not in _tables_read(capture)

    # A late record on a day past the lookback: the rollup leaves that day be, the summaries
    # are built from its rollups as they are.
    settings.BILLING_ROLLUP_LOOKBACK_DAYS = 3
    save(usage(world["tenants"][3], catalog["gpt"], _day_start(old) + timedelta(hours=1), input_tokens=5))
    rolled_up_at = UsageRollupDay.objects.get(day=old).rolled_up_at
    result = usage_rollup()
    assert result.days == []
    assert result.summarized == sorted(UsageRollupDay.objects.values_list("day", flat=True))
    assert UsageRollupDay.objects.get(day=old).rolled_up_at == rolled_up_at
    for day in result.summarized:
        _assert_summaries_sum_the_rollups(day)
    assert _assert_same_figures(world, start, today()) == figures  # the late record: not in a day left be
    assert usage_rollup().summarized == []  # every day current now


@pytest.mark.django_db
def test_a_day_rolled_up_again_by_older_code_is_read_from_its_rollups(world, catalog):
    """A worker still on the code before summaries redoes a day: new rollups, its old
    `summarized_at` no longer matches `rolled_up_at`, and the stale summaries are not read."""
    day = today() - timedelta(days=1)
    tenant = world["tenants"][4]
    save(usage(tenant, catalog["gpt"], _day_start(day) + timedelta(hours=2), input_tokens=10**6))
    marker = UsageRollupDay.objects.get(day=day)
    # What the older code did: rollups deleted and written again, the marker's two fields saved.
    UsageRollup.objects.filter(day=day).delete()
    field = UsageRecord._meta.get_field("created_at")
    bounds = [field.get_db_prep_value(_day_start(d), connection) for d in (day, day + timedelta(days=1))]
    with connection.cursor() as cursor:
        day_value = UsageRollup._meta.get_field("day").get_db_prep_value(day, connection)
        cursor.execute(_rollup_insert_sql(), [day_value, *bounds])
    marker.records = UsageRollup.objects.filter(day=day).aggregate(n=Sum("requests"))["n"]
    marker.rolled_up_at = marker.rolled_up_at + timedelta(minutes=5)
    marker.save(update_fields=["records", "rolled_up_at"])

    truth = oracle(start=day, end=day)
    dashboard = dashboard_summary(start=day, end=day)
    assert (dashboard.totals.requests, dashboard.totals.cost) == (truth.requests, truth.cost)
    assert usage_rollup().summarized == [day]
    _assert_summaries_sum_the_rollups(day)
    assert dashboard_summary(start=day, end=day) == dashboard
