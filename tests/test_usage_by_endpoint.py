"""Usage broken down by endpoint, with readable names, on the staff pages and in /v1/usage.

Records on four endpoints (chat, messages, embeddings, and the coming `responses`), the past days
rolled up and today raw: each page's per-endpoint figures must equal what the raw records give.
"""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db.models import Count, Q, Sum
from django.urls import reverse

from billing.models import UsageRecord
from billing.selectors import usage_summary
from billing.services import usage_rollup
from console.analytics import ENDPOINT_LABELS, dashboard_summary, endpoint_label, tenant_overview
from tests.billing_fixtures import save, usage
from tests.conftest import make_model, make_tenant
from tests.dashboard_fixtures import _at, today

ENDPOINTS = ("chat", "messages", "embeddings", "responses")


@pytest.fixture
def world(catalog):
    embed = make_model("embed-test", "openai", "text-embedding-3-small", input_per_1m="0.02", output_per_1m="0")
    alice, bob = make_tenant("alice"), make_tenant("bob")
    first = today() - timedelta(days=2)
    records = []
    for offset in range(3):
        day = first + timedelta(days=offset)
        n = 0
        for tenant in (alice, bob):
            for endpoint, model, count in (
                ("chat", catalog["gpt"], 3),
                ("messages", catalog["claude"], 2),
                ("embeddings", embed, 4 + offset),
                ("responses", catalog["gpt"], 1),
            ):
                for i in range(count):
                    n += 1
                    output = 0 if endpoint == "embeddings" else 50 + i
                    records.append(
                        usage(tenant, model, _at(day, n), input_tokens=500 + i, output_tokens=output, endpoint=endpoint)
                    )
            n += 1
            records.append(
                usage(tenant, embed, _at(day, n), status_code=502, error_type="upstream_error", endpoint="embeddings")
            )
    save(*records)
    usage_rollup(since=first, until=today() - timedelta(days=1))
    return {"alice": alice, "bob": bob, "first": first}


def truth(*, tenant_id=None) -> dict[str, dict]:
    """Per endpoint, from the raw records alone."""
    records = UsageRecord.objects.all() if tenant_id is None else UsageRecord.objects.filter(tenant_id=tenant_id)
    rows = records.values("endpoint").annotate(
        requests=Count("id"),
        errors=Count("id", filter=Q(status_code__gte=400) | ~Q(error_type="")),
        input_tokens=Sum("input_tokens"),
        output_tokens=Sum("output_tokens"),
        cost=Sum("cost"),
    )
    return {row.pop("endpoint"): row for row in rows}


def figures(shares) -> dict[str, dict]:
    return {
        s.key: {
            "requests": s.totals.requests,
            "errors": s.totals.errors,
            "input_tokens": s.totals.input_tokens,
            "output_tokens": s.totals.output_tokens,
            "cost": s.totals.cost,
        }
        for s in shares
    }


def test_every_endpoint_has_a_readable_name():
    for endpoint in (*UsageRecord.Endpoint.values, "responses"):
        label = endpoint_label(endpoint)
        assert label != endpoint
        assert "/v1/" in label
    assert endpoint_label("embeddings") == "Embeddings (/v1/embeddings)"
    assert set(ENDPOINT_LABELS) >= set(UsageRecord.Endpoint.values)
    assert endpoint_label("something-new") == "something-new"  # never an error on an unknown value


def test_the_dashboard_breaks_usage_down_by_endpoint(world):
    summary = dashboard_summary(start=world["first"], end=today())
    assert figures(summary.by_endpoint) == truth()
    assert [s.key for s in summary.by_endpoint] == sorted(truth(), key=lambda e: (-truth()[e]["cost"], e))
    assert sum((s.share for s in summary.by_endpoint), 0) == pytest.approx(1)
    # Folding the same rows per model gives the models' figures unchanged.
    assert sum(s.totals.requests for s in summary.top_models) == UsageRecord.objects.count()


def test_the_tenant_overview_breaks_the_tenants_usage_down_by_endpoint(world):
    alice = world["alice"]
    overview = tenant_overview(tenant_id=alice.pk, start=world["first"], end=today())
    assert figures(overview.by_endpoint) == truth(tenant_id=alice.pk)
    assert overview.totals.requests == UsageRecord.objects.filter(tenant=alice).count()


def test_the_pages_show_each_endpoint_by_its_name(admin_client, world):
    pages = [
        reverse("admin:index") + "?range=7d",
        reverse("admin:tenants_tenant_overview", args=[world["alice"].pk]) + "?range=7d",
    ]
    for url in pages:
        response = admin_client.get(url)
        assert response.status_code == 200
        html = response.content.decode()
        assert 'id="by-endpoint"' in html
        for endpoint in ENDPOINTS:
            assert f'data-endpoint="{endpoint}"><td>{ENDPOINT_LABELS[endpoint]}</td>' in html, (url, endpoint)


def test_the_usage_report_page_names_the_endpoints(admin_client, world):
    url = reverse("admin:billing_usagerollup_report")
    response = admin_client.get(url, {"tenant": world["alice"].pk, "start": world["first"], "end": today()})
    assert response.status_code == 200
    html = response.content.decode()
    for endpoint in ENDPOINTS:
        assert f'data-endpoint="{endpoint}"><td>{ENDPOINT_LABELS[endpoint]}</td>' in html


def test_v1_usage_by_endpoint_includes_embeddings(world):
    alice = world["alice"]
    summary = usage_summary(tenant_id=alice.pk, start=world["first"], end=today())
    by_endpoint = {row["endpoint"]: row for row in summary["by_endpoint"]}
    expected = truth(tenant_id=alice.pk)
    assert set(by_endpoint) == set(ENDPOINTS)
    for endpoint, row in by_endpoint.items():
        assert (row["requests"], row["errors"]) == (expected[endpoint]["requests"], expected[endpoint]["errors"])
        assert Decimal(row["cost"]) == expected[endpoint]["cost"]
