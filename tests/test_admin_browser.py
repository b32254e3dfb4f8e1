"""The admin in a real browser: Playwright drives the system Chromium (/usr/bin/chromium, which
`make chromium` installs; never a downloaded browser) against a live server, logs in, opens the
dashboard and a tenant's page, reads the figures off the pages and checks them against the
database. Screenshots go to var/test-artifacts/ (printed at the end).

The pages must work offline: every request the browser makes goes to the live server.
"""

import os
from datetime import timedelta
from pathlib import Path

import pytest
from django.urls import reverse
from playwright.sync_api import sync_playwright

from tests.dashboard_fixtures import dashboard_world, money, oracle, today

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "var" / "test-artifacts"
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
