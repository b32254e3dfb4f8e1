"""The admin in a real browser: Playwright drives the system Chromium (/usr/bin/chromium, which
`make chromium` installs; never a downloaded browser) against a live server, logs in, opens the
dashboard and a tenant's page, reads the figures off the pages and checks them against the
database; then visits every console page at 1280 and 1440 px and checks that nothing scrolls
sideways and no table overflows its box. Screenshots go to var/test-artifacts/ (printed at the
end); with UPDATE_DOC_SCREENSHOTS=1 the four the README shows are written to docs/screenshots/.

The pages must work offline: every request the browser makes goes to the live server, and
none of them fails (a missing favicon was a 404 on every page).
"""

import asyncio
import io
import os
from datetime import timedelta
from importlib import import_module
from pathlib import Path

import pytest
import redis
from django.apps import apps as django_apps
from django.conf import settings as django_settings
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone
from playwright.sync_api import sync_playwright

from billing.models import Invoice
from billing.periods import month_start, previous_month
from billing.services import credit_note_create, invoices_generate, usage_rollup
from billing.synthetic import synthetic_usage_create
from gateway import limits, routing
from gateway.routing.store import _keys as routing_keys
from tenants.models import ApiKey, CatalogModel, Deployment, Tenant
from tenants.services import api_key_create
from tests.dashboard_fixtures import dashboard_world, money, oracle, today

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "var" / "test-artifacts"
DOC_SCREENSHOTS = ROOT / "docs" / "screenshots"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.mark.django_db(transaction=True)
def test_staff_see_the_databases_figures_on_the_dashboard_and_a_tenant_page(live_server, catalog, settings):
    assert os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} is missing: `make chromium` installs Debian's chromium"
    # The live server speaks plain http; the test settings' secure cookies would never come back.
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = False
    from django.contrib.auth import get_user_model

    get_user_model().objects.create_superuser("staff", "staff@example.com", "browser-test-pw")
    world = dashboard_world(catalog)
    alice = world["alice"]
    # Everything the pages must show, from the raw records, before the browser starts (the ORM
    # refuses to run inside Playwright's event loop).
    week = oracle(start=today() - timedelta(days=6), end=today())
    alice_week = oracle(start=today() - timedelta(days=6), end=today(), tenant_id=alice.pk)
    overview_path = reverse("admin:tenants_tenant_overview", args=[alice.pk])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    base = live_server.url
    foreign: list[str] = []
    seen: dict[str, str] = {}

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda request: None if request.url.startswith(base) else foreign.append(request.url))
            page.goto(f"{base}/admin/login/")
            page.fill("#id_username", "staff")
            page.fill("#id_password", "browser-test-pw")
            page.click("input[type=submit]")
            page.wait_for_url(f"{base}/admin/")

            page.select_option("#id_range", "7d")
            page.click("#period-form input[type=submit]")
            page.wait_for_url("**range=7d**")
            for name in ("kpi-spend", "kpi-requests", "kpi-input-tokens", "kpi-output-tokens", "kpi-error-rate"):
                seen[f"dashboard {name}"] = page.inner_text(f"#{name}")
            seen["dashboard top tenant"] = page.inner_text("#top-tenants tbody tr:first-child .tenant-link")
            seen["dashboard charts"] = str(page.locator("svg.chart").count())
            seen["dashboard css"] = page.evaluate(
                "getComputedStyle(document.querySelector('.dash-kpis')).display"
            )  # our stylesheet, from our own static files
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

            page.click("#top-tenants tbody tr:first-child .tenant-link")  # the tenant's page, one click
            page.wait_for_url(f"**{overview_path}**")
            for name in ("kpi-spend", "kpi-requests", "budget-spent"):
                seen[f"tenant {name}"] = page.inner_text(f"#{name}")
            seen["tenant models"] = "|".join(
                row.get_attribute("data-model") + "=" + row.locator(".spend").inner_text()
                for row in page.locator("#by-model tbody tr[data-model]").all()
            )
            page.screenshot(path=str(ARTIFACTS / "tenant-overview.png"), full_page=True)
        finally:
            browser.close()

    month_to_date = oracle(start=today().replace(day=1), end=today(), tenant_id=alice.pk).cost
    assert seen == {
        "dashboard kpi-spend": money(week.cost),
        "dashboard kpi-requests": f"{week.requests:,}",
        "dashboard kpi-input-tokens": f"{week.input_tokens:,}",
        "dashboard kpi-output-tokens": f"{week.output_tokens:,}",
        "dashboard kpi-error-rate": f"{week.errors / week.requests * 100:.2f} %",
        "dashboard top tenant": "alice",
        "dashboard charts": "3",
        "dashboard css": "grid",
        "tenant kpi-spend": money(alice_week.cost),
        "tenant kpi-requests": f"{alice_week.requests:,}",
        "tenant budget-spent": money(month_to_date),
        "tenant models": "|".join(
            f"{model}={money(cost)}" for model, cost in sorted(alice_week.by_model.items(), key=lambda kv: -kv[1])
        ),
    }
    assert foreign == []  # no CDN, nothing but our own server
    print(f"\nscreenshots: {ARTIFACTS / 'dashboard.png'}, {ARTIFACTS / 'tenant-overview.png'}")


# What "fits" means, measured in the page: no horizontal scroll of the document; every table
# inside its container (no table wider than the box it sits in, none cut at the window's
# edge); no header cell whose text is clipped.
FIT_REPORT = """() => {
  const problems = [];
  const root = document.documentElement;
  if (root.scrollWidth > innerWidth) problems.push(`page ${root.scrollWidth} px wide`);
  for (const table of document.querySelectorAll("#content table")) {
    const name = table.id || table.className || "table";
    const box = table.parentElement;
    const right = table.getBoundingClientRect().right;
    if (table.offsetWidth > box.clientWidth + 1 || right > box.getBoundingClientRect().right + 1 || right > innerWidth)
      problems.push(`${name}: ${table.offsetWidth} px in a ${box.clientWidth} px box`);
    for (const th of table.querySelectorAll("thead th"))
      if (th.scrollWidth > th.clientWidth + 1) problems.push(`${name}: header "${th.innerText.trim()}" clipped`);
  }
  return problems;
}"""

RANGES = ("7d", "30d", "90d", "month", "last_month")
README_SHOTS = {
    "dashboard 30d": "dashboard",
    "tenant overview": "tenant-overview",
    "invoice": "invoice",
    "analytics": "analytics",
}


def console_world() -> dict:
    """The demo's world: the example tenants, 30 days of synthetic usage, last month's invoices
    finalized, one of them credited and drafted again, this month's drafts."""
    if not CatalogModel.objects.exists():  # an earlier transactional test's flush took the migrations' catalog
        import_module("billing.migrations.0002_default_catalog").catalog_create(django_apps, None)
    call_command("import_tenants", str(django_settings.BASE_DIR / "examples" / "tenants.json"), stdout=io.StringIO())
    end = timezone.now().replace(minute=0, second=0, microsecond=0)
    synthetic_usage_create(start=end - timedelta(days=30), end=end, requests_per_tenant_day=40)
    usage_rollup(since=(end - timedelta(days=31)).date(), until=today() - timedelta(days=1))
    this_month = month_start(today())
    last_month = previous_month(this_month)
    invoices_generate(period=last_month, finalize=True)
    invoices_generate(period=this_month)
    invoice = Invoice.objects.filter(period=last_month, kind=Invoice.Kind.INVOICE).order_by("number").first()
    note = credit_note_create(invoice_id=invoice.pk, reason=f"Cancels {invoice.number} (browser test)")
    invoices_generate(period=last_month)
    tenant = Tenant.objects.order_by("slug").first()
    api_key_create(tenant=tenant, name="browser")
    return {"tenant": tenant, "invoice": invoice, "note": note, "month": f"{last_month:%Y-%m}"}


@pytest.mark.django_db(transaction=True)
def test_every_console_page_fits_1280_and_1440_px(live_server, settings):
    assert os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} is missing: `make chromium` installs Debian's chromium"
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = False
    from django.contrib.auth import get_user_model

    get_user_model().objects.create_superuser("staff", "staff@example.com", "browser-test-pw")
    world = console_world()
    tenant, key = world["tenant"], ApiKey.objects.filter(tenant=world["tenant"]).first()
    pages = {
        **{
            f"dashboard {r}": reverse("admin:index") + f"?range={r}"
            for r in ("7d", "30d", "90d", "month", "last_month")
        },
        "tenant overview": reverse("admin:tenants_tenant_overview", args=[tenant.pk]),
        "tenant list": reverse("admin:tenants_tenant_changelist"),
        "tenant audit": reverse("admin:tenants_tenant_history", args=[tenant.pk]),
        "key list": reverse("admin:tenants_apikey_changelist"),
        "key page": reverse("admin:tenants_apikey_change", args=[key.pk]),
        "invoice list": reverse("admin:billing_invoice_changelist"),
        "invoice": reverse("admin:billing_invoice_change", args=[world["invoice"].pk]),
        "credit note": reverse("admin:billing_invoice_change", args=[world["note"].pk]),
        "analytics": reverse("admin:analytics"),
        "finance summary": reverse("admin:billing_invoice_summary") + f"?period={world['month']}",
        "model and deployments": reverse("admin:tenants_catalogmodel_change", args=[CatalogModel.objects.first().pk]),
        "deployment health": reverse("admin:deployment_health"),
    }
    # Every other list of the console too: a table added later is held to the same width.
    from django.contrib import admin

    for model in admin.site._registry:
        url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        if url not in pages.values():
            pages[f"{model._meta.verbose_name_plural} list"] = url
    # One deployment out of rotation, so that the health list's longest state is measured too.
    settings.GATEWAY_BREAKER_FAILURES = 1
    # Cooling down for the whole visit: two widths of every page take longer than the default
    # 30 s on a loaded machine, after which the deployment would show as probing.
    settings.GATEWAY_BREAKER_COOLDOWN_SECONDS = 3600
    broken = Deployment.objects.filter(active=True, model__active=True).order_by("model__name", "priority", "id")[0]
    open_breaker(broken.pk)
    base = live_server.url
    foreign: list[str] = []
    failed: list[str] = []
    problems: dict[str, list[str]] = {}
    docs = os.environ.get("UPDATE_DOC_SCREENSHOTS") == "1"
    try:
        shown = {"deployment health": (f'tr[data-deployment="{broken.pk}"] td.state', "cooling down until")}
        visit_every_page(base, pages, problems, failed, foreign, docs, shown=shown)
    finally:
        forget_breaker(broken.pk)
    assert problems == {}, "\n".join(f"{page}: {found}" for page, found in problems.items())
    assert failed == []  # the favicon included
    assert foreign == []  # no CDN, nothing but our own server
    print(f"\nscreenshots: {ARTIFACTS / '1280'}, {ARTIFACTS / '1440'}")


def open_breaker(deployment_id: int) -> None:
    """A counted failure on the deployment (GATEWAY_BREAKER_FAILURES = 1 opens it), in the
    routing store the live server reads."""

    async def fail():
        try:
            await routing.store().done(
                deployment_id, "browser-test", result="fail", probe=False, latency_ms=1.0, release=True
            )
        finally:
            await limits.aclose()

    asyncio.run(fail())


def forget_breaker(deployment_id: int) -> None:
    """The Redis database outlives this test: later tests must find the deployment in rotation."""
    routing.memory_routing.clear()
    if django_settings.REDIS_URL:
        redis.Redis.from_url(django_settings.REDIS_URL).delete(*routing_keys(deployment_id))


def visit_every_page(
    base: str, pages: dict, problems: dict, failed: list, foreign: list, docs: bool, *, shown: dict
) -> None:
    """Each page at each width; `shown`: page name -> (selector, text the element starts with)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        try:
            for width in (1280, 1440):
                page = browser.new_page(viewport={"width": width, "height": 900})
                page.on("request", lambda r: None if r.url.startswith(base) else foreign.append(r.url))
                page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
                page.goto(f"{base}/admin/login/")
                page.fill("#id_username", "staff")
                page.fill("#id_password", "browser-test-pw")
                page.click("input[type=submit]")
                page.wait_for_url(f"{base}/admin/")
                (ARTIFACTS / str(width)).mkdir(parents=True, exist_ok=True)
                for name, path in pages.items():
                    response = page.goto(base + path)
                    assert response.status == 200, f"{name}: {response.status}"
                    if name in shown:
                        selector, text = shown[name]
                        assert page.locator(selector).inner_text().startswith(text), name
                    found = page.evaluate(FIT_REPORT)
                    if found:
                        problems[f"{name} at {width} px"] = found
                    slug = name.replace(" ", "-")
                    page.screenshot(path=str(ARTIFACTS / str(width) / f"{slug}.png"), full_page=True)
                    if docs and width == 1280 and name in README_SHOTS:
                        DOC_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                        # The invoice whole (its totals and credit notes are below the fold); the others' first screen.
                        shot = DOC_SCREENSHOTS / f"{README_SHOTS[name]}.png"
                        page.screenshot(path=str(shot), full_page=name in ("invoice", "analytics"))
                page.close()
        finally:
            browser.close()
