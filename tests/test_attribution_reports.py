"""Attribution where staff and finance look (issue 14 part 6): the tenant overview and the
dashboard by project, the analytics CSV by project, and the export of a tenant's month by end user
(management command and admin link). Every figure is held against the raw records alone.
"""

import csv
import io
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from billing.exports import END_USER_CSV_COLUMNS
from billing.models import UsageRollupDay
from billing.selectors import money_str
from console.analytics import NO_PROJECT, dashboard_summary, tenant_overview
from console.dashboard import PROJECT_CSV_COLUMNS
from tests.attribution_fixtures import MARCH, attribution_world, raw_groups
from tests.billing_fixtures import at, save, usage

PERIOD = {"start": MARCH[0], "end": MARCH[4], "today": MARCH[5]}
QUERY = {"start": "2025-03-01", "end": "2025-03-05"}
FORMULA_STARTS = ("=", "+", "-", "@")


@pytest.fixture
def world(catalog):
    return attribution_world(catalog)


def _figures(shares) -> dict:
    return {s.key: (s.totals.requests, s.totals.input_tokens, s.totals.output_tokens, s.totals.cost) for s in shares}


def _parse(text: str) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(text, newline="")))
    for row in rows:
        for cell in row:
            if cell.startswith(FORMULA_STARTS):
                assert cell[1:].replace(".", "", 1).isdigit(), cell  # only a negative number may
    return rows


def test_the_tenant_overview_breaks_usage_down_by_project(world):
    alice = world["alice"]
    overview = tenant_overview(tenant_id=alice.id, **PERIOD)
    assert _figures(overview.by_project) == raw_groups(alice, lambda r: r.project.name if r.project else NO_PROJECT)
    assert sum(s.totals.cost for s in overview.by_project) == overview.totals.cost
    assert sum(s.totals.requests for s in overview.by_project) == overview.totals.requests


def test_the_dashboard_ranks_projects_across_tenants_by_their_tenant(world):
    summary = dashboard_summary(**PERIOD)
    got = _figures(summary.top_projects)
    assert set(got) == {"alice/search", "alice/chat", f"alice/{NO_PROJECT}", "bob/search"}
    assert got["bob/search"] == raw_groups(world["bob"], lambda r: "search")["search"]
    assert [s.totals.cost for s in summary.top_projects] == sorted(
        (s.totals.cost for s in summary.top_projects), reverse=True
    )


def test_the_pages_show_the_projects(admin_client, world):
    overview = admin_client.get(reverse("admin:tenants_tenant_overview", args=[world["alice"].pk]), QUERY)
    assert overview.status_code == 200
    html = overview.content.decode()
    assert 'id="by-project"' in html
    for name in ("search", "chat", NO_PROJECT):
        assert f'data-project="{name}"' in html
    assert 'id="end-users-csv"' in html
    dashboard = admin_client.get(reverse("admin:index"), QUERY).content.decode()
    assert 'data-project="bob/search"' in dashboard


def test_the_analytics_csv_by_project_opens_as_is_and_adds_up(admin_client, world):
    world["chat"].name = "=HYPERLINK(1)"  # not a slug: only the database's word for it counts here
    world["chat"].save()
    response = admin_client.get(reverse("admin:analytics"), {**QUERY, "format": "csv", "by": "project"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    rows = _parse(response.content.decode())
    assert rows[0] == PROJECT_CSV_COLUMNS
    body = [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    assert {(r["tenant"], r["project"]) for r in body} == {
        ("alice", "search"),
        ("alice", "'=HYPERLINK(1)"),
        ("alice", ""),
        ("bob", "search"),
    }
    for tenant in (world["alice"], world["bob"]):
        mine = [r for r in body if r["tenant"] == tenant.slug]
        records = raw_groups(tenant, lambda r: 0)[0]
        assert sum(int(r["requests"]) for r in mine) == records[0]
        assert sum(int(r["input_tokens"]) for r in mine) == records[1]
        assert abs(sum(Decimal(r["spend"]) for r in mine) - records[3]) <= Decimal("0.005") * len(mine)


# --- the export by end user ------------------------------------------------------------------------


def _export(*args) -> str:
    out = io.StringIO()
    call_command("export_end_user_usage", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_the_export_by_end_user_is_the_raw_records_per_end_user_of_the_tenant_only(world, catalog):
    alice = world["alice"]
    formula = usage(alice, catalog["gpt"], at(MARCH[10]), input_tokens=10, output_tokens=1)
    formula.end_user = "@SUM(A1)"
    save(formula)
    text = _export("alice", "--period", "2025-03")
    assert text.endswith("\r\n")
    rows = _parse(text)
    assert rows[0] == END_USER_CSV_COLUMNS
    body = [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    expected = raw_groups(alice, lambda r: r.end_user, end=MARCH[30])
    got = {
        r["end user"]: (int(r["requests"]), int(r["input tokens"]), int(r["output tokens"]), Decimal(r["cost"]))
        for r in body
    }
    assert got == {("'" + k if k.startswith("@") else k): v for k, v in expected.items()}
    assert {r["tenant"] for r in body} == {"alice"}
    assert all((r["period start"], r["period end"]) == ("2025-03-01", "2025-03-31") for r in body)
    assert [Decimal(r["cost"]) for r in body] == sorted((Decimal(r["cost"]) for r in body), reverse=True)
    assert all(r["cost"] == money_str(Decimal(r["cost"])) for r in body)
    # bob's month has his one end user, nothing of alice's.
    bobs = _parse(_export("bob", "--period", "2025-03"))
    assert [row[3] for row in bobs[1:]] == ["user-1"]
    assert bobs[1][4] == "5"


def test_the_export_by_end_user_refuses_a_pruned_month_and_an_unknown_tenant(world, tmp_path):
    with pytest.raises(CommandError, match="no tenant"):
        _export("nobody", "--period", "2025-03")
    path = tmp_path / "march.csv"
    _export("alice", "--period", "2025-03", "--output", str(path))
    assert path.read_bytes().startswith(b"tenant,period start")
    UsageRollupDay.objects.filter(day=MARCH[0]).update(pruned=True)
    with pytest.raises(CommandError, match="pruned"):
        _export("alice", "--period", "2025-03")


def test_the_admin_offers_the_export_by_end_user(admin_client, world):
    url = reverse("admin:tenants_tenant_end_users_csv", args=[world["bob"].pk])
    response = admin_client.get(url, {"period": "2025-03"})
    assert response.status_code == 200
    assert "end-users-bob-2025-03.csv" in response["Content-Disposition"]
    rows = _parse(response.content.decode())
    assert rows[0] == END_USER_CSV_COLUMNS
    assert [row[3] for row in rows[1:]] == ["user-1"]
    assert admin_client.get(url, {"period": "March"}).status_code == 400
    missing = reverse("admin:tenants_tenant_end_users_csv", args=[world["bob"].pk + 1000])
    assert admin_client.get(missing, {"period": "2025-03"}).status_code == 404
