"""The staff dashboard (the admin's home page), the tenant overview and the tenants side by side:
figures equal to what the raw records alone give, periods validated, pages of constant query
count, CSV, permissions, and every staff task two clicks from the dashboard.
"""

import csv
import io
import re
from datetime import timedelta
from decimal import Decimal
from html.parser import HTMLParser

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from billing import latency
from billing.models import BudgetAlert, Invoice, Plan, Subscription, UsageRollup
from billing.services import invoices_generate, usage_rollup
from console import analytics, dashboard
from console.analytics import dashboard_summary, tenant_comparison, tenant_overview
from tenants.models import ApiKey, Tenant
from tenants.services import api_key_create
from tests.billing_fixtures import save, usage
from tests.conftest import make_tenant
from tests.dashboard_fixtures import dashboard_world, money, oracle, today

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(catalog):
    return dashboard_world(catalog)


def text_of(html: str, element_id: str) -> str:
    match = re.search(rf'id="{re.escape(element_id)}"[^>]*>(.*?)</', html, re.S)
    assert match, f"no #{element_id} on the page"
    return match.group(1).strip()


class Links(HTMLParser):
    """Every <a href> and every <form> (action, method, hidden inputs, id) of a page."""

    def __init__(self):
        super().__init__()
        self.links: list[tuple[str, dict]] = []
        self.forms: list[dict] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.links.append((a["href"], a))
        elif tag == "form":
            self.forms.append({"action": a.get("action", ""), "method": a.get("method", "get"), "id": a.get("id"),
                               "class": a.get("class", ""), "fields": {}})  # fmt: skip
        elif tag == "input" and self.forms and a.get("name"):
            self.forms[-1]["fields"][a["name"]] = a.get("value", "")


def parse(response) -> Links:
    parser = Links()
    parser.feed(response.content.decode())
    return parser


# --- the figures ---------------------------------------------------------------------------


def test_the_dashboard_figures_are_what_the_raw_records_give(world):
    start, end = world["first"], today()
    truth = oracle(start=start, end=end)
    summary = dashboard_summary(start=start, end=end)
    assert UsageRollup.objects.exists()  # past days come from rollups, today from raw records
    totals = summary.totals
    assert (totals.requests, totals.errors, totals.cache_hits) == (truth.requests, truth.errors, truth.cache_hits)
    assert (totals.input_tokens, totals.output_tokens) == (truth.input_tokens, truth.output_tokens)
    assert totals.cost == truth.cost
    assert summary.savings.response_cache == truth.response_cache_savings > 0
    assert summary.savings.prompt_cache == truth.prompt_cache_savings > 0
    assert {s.tenant_id: s.totals.cost for s in summary.top_tenants} == truth.by_tenant
    assert [s.key for s in summary.top_tenants] == ["alice", "bob"]  # carol has no usage
    assert {s.key: s.totals.cost for s in summary.top_models} == truth.by_model
    assert {t: n for t, n, _ in summary.errors_by_type} == dict(truth.errors_by_type)
    markup = {world["alice"].pk: Decimal("1.2"), world["bob"].pk: Decimal("1.1")}
    assert summary.revenue == sum(cost * markup[tenant] for tenant, cost in truth.by_tenant.items())
    assert [line.slug for line in summary.budgets] == ["alice"]
    assert summary.budgets[0].over
    assert len(summary.daily) == analytics.CHART_DAYS
    assert summary.daily[-1].day == today()
    by_day = {p.day: p for p in summary.daily}
    for offset in range(4):
        day = start + timedelta(days=offset)
        day_truth = oracle(start=day, end=day)
        assert (by_day[day].requests, by_day[day].errors, by_day[day].cost) == (
            day_truth.requests,
            day_truth.errors,
            day_truth.cost,
        )


def test_latency_percentiles_fall_in_the_bucket_of_the_true_percentile(world):
    summary = dashboard_summary(start=world["first"], end=today())
    values = sorted(oracle(start=world["first"], end=today()).latencies)
    assert summary.latency.requests == len(values)  # successful requests only
    for fraction, estimate in ((0.5, summary.latency.p50), (0.95, summary.latency.p95)):
        true = values[max(0, int(round(fraction * len(values))) - 1)]
        bucket = latency.BUCKETS[latency.bucket_of(true)]
        assert bucket.lower <= estimate.ms <= (bucket.upper or bucket.lower), (fraction, true, estimate)


def test_the_tenant_overview_figures_are_the_tenants_own(world):
    alice = world["alice"]
    key = api_key_create(tenant=alice, name="ci")[0]
    api_key_create(tenant=world["bob"], name="other")
    truth = oracle(start=world["first"], end=today(), tenant_id=alice.pk)
    overview = tenant_overview(tenant_id=alice.pk, start=world["first"], end=today())
    assert overview.totals.cost == truth.cost
    assert overview.totals.requests == truth.requests
    assert {s.key: s.totals.cost for s in overview.by_model} == truth.by_model
    assert overview.month_to_date == oracle(start=today().replace(day=1), end=today(), tenant_id=alice.pk).cost
    assert overview.budget == Decimal("0.01")
    assert overview.budget_used > 1
    assert [k.display for k in overview.keys] == [key.display]
    assert all(r.tenant_id == alice.pk and (r.status_code >= 400 or r.error_type) for r in overview.recent_errors)
    assert overview.recent_errors
    assert overview.recent_errors == sorted(overview.recent_errors, key=lambda r: r.created_at, reverse=True)
    assert overview.savings.response_cache == truth.response_cache_savings


def test_tenants_side_by_side_compare_with_the_previous_period(world):
    end = today()
    start = end - timedelta(days=1)  # today and yesterday against the two days before
    rows = {row.slug: row for row in tenant_comparison(start=start, end=end, sort="tenant")}
    assert list(rows) == ["alice", "bob", "carol"]
    for slug in ("alice", "bob"):
        tenant = world[slug]
        now = oracle(start=start, end=end, tenant_id=tenant.pk)
        before = oracle(start=start - timedelta(days=2), end=start - timedelta(days=1), tenant_id=tenant.pk)
        row = rows[slug]
        assert (row.current.cost, row.previous.cost) == (now.cost, before.cost)
        assert row.growth == pytest.approx(float((now.cost - before.cost) * 100 / before.cost))
        assert row.current.error_rate == pytest.approx(now.errors / now.requests)
        assert row.current.cost_per_1k_tokens == now.cost * 1000 / (now.input_tokens + now.output_tokens)
    assert rows["carol"].current.requests == 0
    assert rows["carol"].growth is None


def test_growth_is_new_when_the_previous_period_spent_next_to_nothing(admin_client, world, catalog):
    """A tenant that spent a tenth of a cent before the period and dollars in it: "new", not
    +100,000 %. A previous period of a tenth or more of this one still gives a figure."""
    dave = make_tenant("dave")
    end = today()
    start = end - timedelta(days=1)
    tiny = big = catalog["claude"]  # 1.00 per 1M input tokens
    save(
        usage(dave, tiny, usage_at(start - timedelta(days=1)), input_tokens=1_000),  # 0.001 before
        usage(dave, big, usage_at(start), input_tokens=1_000_000),  # 1.00 in the period
    )
    usage_rollup(since=start - timedelta(days=1), until=end - timedelta(days=1))  # past days are read from rollups
    rows = {row.slug: row for row in tenant_comparison(start=start, end=end, sort="tenant")}
    dave_row = rows["dave"]
    assert (dave_row.previous.cost, dave_row.current.cost) == (Decimal("0.001"), Decimal("1"))
    assert dave_row.growth is None
    assert dave_row.is_new
    assert not rows["carol"].is_new  # spent nothing in either period: no growth, not new
    assert rows["alice"].growth is not None
    assert not rows["alice"].is_new
    # The boundary: a previous period of exactly a tenth still compares (+900 %).
    save(usage(dave, big, usage_at(start - timedelta(days=1), 1), input_tokens=99_000))  # 0.099 more before
    usage_rollup(since=start - timedelta(days=1), until=end - timedelta(days=1))
    dave_row = {row.slug: row for row in tenant_comparison(start=start, end=end, sort="tenant")}["dave"]
    assert dave_row.growth == pytest.approx(900.0)
    assert not dave_row.is_new
    page = admin_client.get(reverse("admin:analytics") + f"?start={start}&end={end}&range=custom")
    html = page.content.decode()
    assert re.search(r'data-tenant="dave">.*?<td class="num growth">\+900\.0 %</td>', html, re.DOTALL)


def test_the_analytics_page_says_new_rather_than_a_meaningless_growth(admin_client, world, catalog):
    dave = make_tenant("dave")
    end = today()
    start = end - timedelta(days=1)
    save(
        usage(dave, catalog["claude"], usage_at(start - timedelta(days=1)), input_tokens=1_000),
        usage(dave, catalog["claude"], usage_at(start), input_tokens=1_000_000),
    )
    usage_rollup(since=start - timedelta(days=1), until=end - timedelta(days=1))
    page = admin_client.get(reverse("admin:analytics") + f"?start={start}&end={end}&range=custom")
    assert page.status_code == 200, page.content.decode()[:500]
    row = re.search(r'<tr data-tenant="dave">(.*?)</tr>', page.content.decode(), re.DOTALL).group(1)
    growth = re.search(r'<td class="num growth">(.*?)</td>', row, re.DOTALL).group(1)
    assert ">new<" in growth
    assert "%" not in growth


def usage_at(day, minute: int = 0):
    return timezone.make_aware(timezone.datetime.combine(day, timezone.datetime.min.time())) + timedelta(
        minutes=minute, seconds=30
    )


def test_the_comparison_sorts_either_way_with_empty_values_last(world):
    by_spend = [r.slug for r in tenant_comparison(start=world["first"], end=today(), sort="-spend")]
    assert by_spend[-1] == "carol"
    assert by_spend[0] == "alice"
    ascending = [r.slug for r in tenant_comparison(start=world["first"], end=today(), sort="spend")]
    assert ascending == ["carol", "bob", "alice"]
    growth = [r.slug for r in tenant_comparison(start=world["first"], end=today(), sort="growth")]
    assert growth[-1] == "carol"  # nothing to grow from: last either way
    with pytest.raises(ValueError, match="unknown sort"):
        tenant_comparison(start=world["first"], end=today(), sort="secret")


# --- the pages -----------------------------------------------------------------------------


def test_the_dashboard_page_shows_the_figures_and_keeps_the_app_list(admin_client, world):
    response = admin_client.get(reverse("admin:index") + "?range=7d")
    assert response.status_code == 200
    html = response.content.decode()
    start = today() - timedelta(days=6)
    truth = oracle(start=start, end=today())
    assert text_of(html, "kpi-spend") == money(truth.cost)
    assert text_of(html, "kpi-requests") == f"{truth.requests:,}"
    assert text_of(html, "kpi-input-tokens") == f"{truth.input_tokens:,}"
    assert text_of(html, "kpi-error-rate") == f"{truth.errors / truth.requests * 100:.2f} %"
    assert text_of(html, "kpi-savings-response") == money(truth.response_cache_savings)
    assert text_of(html, "kpi-p50").endswith("ms")
    assert html.count('class="chart"') == 3
    assert 'id="chart-spend"' in html
    assert "<script" not in html.split('id="content-main"')[1]  # charts are drawn on the server
    assert reverse("admin:tenants_tenant_changelist") in html
    assert 'class="app-billing' in html


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("?range=forever", "Select a valid choice"),
        ("?range=custom&start=2024-02-30&end=2024-03-01", "Enter a valid date"),
        ("?range=custom&start=2024-03-01", "needs both a start and an end"),
        ("?start=2024-03-05&end=2024-03-01", "on or after the start"),
        ("?range=custom&start=2020-01-01&end=2024-01-01", "at most 366 days"),
        ("?range=custom&start=2024-01-01&end=2999-01-01", "cannot be after today"),
    ],
)
def test_a_bad_period_is_a_clear_400_not_a_500(admin_client, world, query, message):
    for url in (
        reverse("admin:index"),
        reverse("admin:analytics"),
        reverse("admin:tenants_tenant_overview", args=[world["alice"].pk]),
    ):
        response = admin_client.get(url + query)
        assert response.status_code == 400, url
        html = response.content.decode()
        assert message in html
        assert 'id="period-errors"' in html
        assert "Showing last 30 days instead" in html


def test_each_period_choice_gives_its_days(admin_client, world):
    first_of_month = today().replace(day=1)
    last_month_end = first_of_month - timedelta(days=1)
    expected = {
        "7d": (today() - timedelta(days=6), today()),
        "90d": (today() - timedelta(days=89), today()),
        "month": (first_of_month, today()),
        "last_month": (last_month_end.replace(day=1), last_month_end),
        "custom&start=2024-01-02&end=2024-01-31": (today().replace(2024, 1, 2), today().replace(2024, 1, 31)),
    }
    for query, (start, end) in expected.items():
        response = admin_client.get(reverse("admin:index") + f"?range={query}")
        assert response.status_code == 200
        summary = response.context["summary"]
        assert (summary.start, summary.end) == (start, end), query


def test_the_tenant_overview_page_shows_limits_keys_invoices_and_errors(admin_client, world):
    alice = world["alice"]
    Tenant.objects.filter(pk=alice.pk).update(requests_per_minute=60, tokens_per_minute=50_000, max_concurrent=4)
    key, raw_key = api_key_create(tenant=alice, name="ci")
    invoices_generate(period=today().replace(day=1))
    BudgetAlert.objects.create(
        tenant=alice,
        period=today().replace(day=1),
        threshold=100,
        spend=Decimal("0.02"),
        budget=Decimal("0.01"),
        created_at=timezone.now(),
    )
    url = reverse("admin:tenants_tenant_overview", args=[alice.pk])
    response = admin_client.get(url + "?range=7d")
    assert response.status_code == 200
    html = response.content.decode()
    truth = oracle(start=today() - timedelta(days=6), end=today(), tenant_id=alice.pk)
    assert text_of(html, "kpi-spend") == money(truth.cost)
    assert text_of(html, "limit-rpm") == "60"
    assert text_of(html, "limit-tpm") == "50,000"
    assert text_of(html, "limit-concurrency") == "4"
    mtd = oracle(start=today().replace(day=1), end=today(), tenant_id=alice.pk).cost
    assert text_of(html, "budget-spent") == money(mtd)
    assert key.display in html
    assert raw_key not in html
    assert key.key_hash not in html
    invoice = Invoice.objects.get(tenant=alice, period=today().replace(day=1))
    assert reverse("admin:billing_invoice_change", args=[invoice.pk]) in html
    assert "upstream_rate_limit" in html or "upstream_error" in html
    assert "0.02 of 0.01" in html  # the alert
    assert "in the current 60 s window" in html  # live counters read from Redis (the test settings use it)
    assert text_of(html, "live-rpm") == "0 this minute"  # requests/min are read live too
    change = admin_client.get(reverse("admin:tenants_tenant_change", args=[alice.pk])).content.decode()
    assert url in change  # reachable from the tenant's admin page
    assert url in admin_client.get(reverse("admin:tenants_tenant_changelist")).content.decode()  # and the list
    assert admin_client.get(reverse("admin:tenants_tenant_overview", args=[999_999])).status_code == 404


def test_an_unreadable_limits_store_is_said_on_the_page_not_raised(admin_client, world, monkeypatch):
    def broken(tenant_id):
        raise ConnectionError("limits store down")

    monkeypatch.setattr(analytics, "live_usage_sync", broken)
    response = admin_client.get(reverse("admin:tenants_tenant_overview", args=[world["alice"].pk]))
    assert response.status_code == 200
    assert "the limits store could not be read (ConnectionError)" in response.content.decode()


def test_the_analytics_page_sorts_and_exports_csv(admin_client, world):
    url = reverse("admin:analytics")
    page = admin_client.get(url + "?range=7d&sort=spend")
    assert page.status_code == 200
    html = page.content.decode()
    assert html.index('data-tenant="carol"') < html.index('data-tenant="bob"') < html.index('data-tenant="alice"')
    csv_href = next(href for href, attrs in parse(page).links if attrs.get("id") == "csv-link")
    export = admin_client.get(url + csv_href.replace("&amp;", "&"))
    assert export["Content-Type"] == "text/csv; charset=utf-8"
    rows = list(csv.reader(io.StringIO(export.content.decode("utf-8"))))
    assert rows[0][:7] == ["tenant", "name", "status", "plan", "period_start", "period_end", "spend"]
    assert [row[0] for row in rows[1:]] == ["carol", "bob", "alice"]  # the page's order
    alice = dict(zip(rows[0], next(row for row in rows if row[0] == "alice"), strict=True))
    truth = oracle(start=today() - timedelta(days=6), end=today(), tenant_id=world["alice"].pk)
    assert alice["spend"] == money(truth.cost).replace(",", "")
    assert alice["requests"] == str(truth.requests)
    assert re.fullmatch(r"\d+\.\d{6}", alice["cost_per_1k_tokens"])
    assert admin_client.get(url + "?sort=key_hash").status_code == 400


def test_the_analytics_page_shows_a_page_of_tenants_and_the_csv_every_tenant(admin_client, world, monkeypatch):
    monkeypatch.setattr(dashboard, "ANALYTICS_PER_PAGE", 2)
    url = reverse("admin:analytics")
    first = admin_client.get(url + "?range=7d&sort=spend")
    assert first.status_code == 200
    html = first.content.decode()
    assert 'data-tenant="carol"' in html
    assert 'data-tenant="bob"' in html
    assert 'data-tenant="alice"' not in html
    assert "Tenants 1–2 of 3" in html
    links = {attrs.get("id"): href.replace("&amp;", "&") for href, attrs in parse(first).links}
    assert "page-previous" not in links
    assert links["page-next"] == "?range=7d&sort=spend&page=2"  # the period and the order kept
    second = admin_client.get(url + links["page-next"]).content.decode()
    assert 'data-tenant="alice"' in second
    assert 'data-tenant="bob"' not in second
    assert "Tenants 3–3 of 3" in second
    export = admin_client.get(url + links["csv-link"])
    assert [row[0] for row in csv.reader(io.StringIO(export.content.decode()))][1:] == ["carol", "bob", "alice"]
    for bad in ("0", "3", "two", "-1"):
        refused = admin_client.get(url + f"?range=7d&page={bad}")
        assert refused.status_code == 400
        assert "page: a whole number from 1 to 2." in refused.content.decode()
    monkeypatch.setattr(dashboard, "ANALYTICS_PER_PAGE", 100)
    assert 'id="comparison-pages"' not in admin_client.get(url).content.decode()  # one page: no page links


def test_staff_without_the_usage_permission_get_the_app_list_only(client, world):
    user = get_user_model().objects.create_user("support", password="pw-support-1", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_tenant"))
    client.force_login(user)
    index = client.get(reverse("admin:index"))
    assert index.status_code == 200
    assert "kpi-spend" not in index.content.decode()
    assert client.get(reverse("admin:analytics")).status_code == 403
    assert client.get(reverse("admin:tenants_tenant_overview", args=[world["alice"].pk])).status_code == 403


# --- query counts: an N+1 is a failing test ---------------------------------------------------


def _more_of_everything(catalog, n: int) -> None:
    plan = Plan.objects.get(name="starter")
    for i in range(n):
        tenant = make_tenant(f"extra-{i:02d}", plan=plan)
        api_key_create(tenant=tenant, name="k")
        at = timezone.now() - timedelta(minutes=i + 1)
        save(*(usage(tenant, catalog["claude"], at, input_tokens=3000, output_tokens=1000) for _ in range(3)))
        BudgetAlert.objects.create(
            tenant=tenant,
            period=today().replace(day=1),
            threshold=50,
            spend=Decimal(1),
            budget=Decimal(2),
            created_at=timezone.now(),
        )
        Subscription.objects.filter(tenant=tenant).update(monthly_budget=Decimal("0.01"))
    invoices_generate(period=today().replace(day=1))


# Usage by project (issue 14): one more aggregate (its rolled-up days, the UNION) and the names of
# the projects (and, on the dashboard, the tenants' slugs): a fixed number, whatever the tenants.
DASHBOARD_QUERIES = 17  # fewer aggregates since the daily summaries (issue 15): per tenant and project with the
# month-to-date spend, and every platform-wide figure from one per model, endpoint, outcome and price
OVERVIEW_QUERIES = 24
ANALYTICS_QUERIES = 8


def test_the_pages_run_a_fixed_number_of_queries_however_many_tenants(
    admin_client, world, catalog, django_assert_max_num_queries
):
    pages = {
        "dashboard": (reverse("admin:index"), DASHBOARD_QUERIES),
        "overview": (reverse("admin:tenants_tenant_overview", args=[world["alice"].pk]), OVERVIEW_QUERIES),
        "analytics": (reverse("admin:analytics"), ANALYTICS_QUERIES),
    }

    def counts():
        result = {}
        for name, (url, limit) in pages.items():
            with django_assert_max_num_queries(limit), CaptureQueriesContext(connection) as ctx:
                assert admin_client.get(url).status_code == 200
            result[name] = len(ctx.captured_queries)
        return result

    few = counts()
    api_key_create(tenant=world["alice"], name="second")
    _more_of_everything(catalog, 12)
    assert counts() == few


# --- two clicks from the dashboard -------------------------------------------------------------


def test_every_staff_task_is_two_clicks_from_the_dashboard(admin_client, world):
    alice = world["alice"]
    key = api_key_create(tenant=alice, name="ci")[0]
    invoices_generate(period=today().replace(day=1))
    dashboard = admin_client.get(reverse("admin:index"))
    page = parse(dashboard)

    # 1. Search tenants: the search box goes to the tenant list's search.
    search = next(f for f in page.forms if f["id"] == "tenant-search")
    found = admin_client.get(search["action"], {"q": "ali"})
    assert found.status_code == 200
    assert found.context["cl"].result_count == 1

    # 2. See an invoice: one click.
    invoice_href = next(href for href, attrs in page.links if attrs.get("class") == "invoice-link")
    assert admin_client.get(invoice_href).status_code == 200

    # 3. The tenant's page: one click; from there one form each.
    overview_href = next(href for href, _ in page.links if f"/tenants/tenant/{alice.pk}/overview/" in href)
    overview = admin_client.get(overview_href)
    assert overview.status_code == 200
    tools = parse(overview)
    create_href = next(href for href, attrs in tools.links if attrs.get("id") == "create-key-link")
    add_page = admin_client.get(create_href)
    assert add_page.status_code == 200
    assert add_page.context["adminform"].form.initial["tenant"] == str(alice.pk)

    def submit(form):
        return admin_client.post(form["action"], form["fields"], follow=True)

    revoke = next(f for f in tools.forms if "revoke-form" in f["class"])
    assert submit(revoke).status_code == 200
    key.refresh_from_db()
    assert key.revoked_at is not None

    plan_form = next(f for f in tools.forms if f["id"] == "change-plan-form")
    plan_page = submit(plan_form)
    assert "Change plan" in plan_page.content.decode()  # the action's own page, with the plan choice
    fields = {**plan_form["fields"], "apply": "1", "plan": world["starter"].pk}
    admin_client.post(plan_form["action"], fields)
    assert Subscription.objects.get(tenant=alice).plan == world["starter"]

    suspend = next(f for f in tools.forms if f["id"] == "status-form")
    assert submit(suspend).status_code == 200
    alice.refresh_from_db()
    assert alice.status == Tenant.Status.SUSPENDED
    resume = next(f for f in parse(admin_client.get(overview_href)).forms if f["id"] == "status-form")
    assert resume["fields"]["action"] == "resume_tenants"
    submit(resume)
    alice.refresh_from_db()
    assert alice.status == Tenant.Status.ACTIVE
    assert ApiKey.objects.filter(tenant=alice, revoked_at__isnull=True).count() == 0
