"""The billing admin: invoices (filters, lines, actions that call services, CSV), the finance
summary, shared costs, rollups and the usage report."""

import csv
import io
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from billing import tasks
from billing.models import Invoice, Plan, SharedCost, UsageRollup
from billing.selectors import usage_summary
from billing.services import invoices_generate, usage_rollup
from tests.billing_fixtures import at, save, usage
from tests.conftest import make_tenant

D = Decimal
MARCH, FEBRUARY = date(2024, 3, 1), date(2024, 2, 1)
CLOSED = datetime(2024, 4, 20, tzinfo=UTC)
LIST = reverse("admin:billing_invoice_changelist")


@pytest.fixture
def invoiced(catalog):
    plan = Plan.objects.create(name="business", monthly_base_fee=D("10.00"), markup_percent=D("10"))
    alice, bob = make_tenant("alice", plan=plan), make_tenant("bob", plan=plan)
    for day in (date(2024, 2, 10), date(2024, 3, 10)):
        save(
            usage(alice, catalog["gpt"], at(day), input_tokens=2_000_000, output_tokens=100_000),
            usage(bob, catalog["claude"], at(day), input_tokens=300_000, output_tokens=20_000),
        )
    invoices_generate(period=FEBRUARY, finalize=True, now=CLOSED)
    invoices_generate(period=MARCH, now=CLOSED)
    return {"alice": alice, "bob": bob, "plan": plan}


def action(client, name, invoices):
    return client.post(
        LIST, {"action": name, "_selected_action": [invoice.pk for invoice in invoices]}, follow=name != "export_csv"
    )


def messages_of(response):
    return [str(message) for message in response.context["messages"]]


@pytest.mark.django_db
def test_the_invoice_list_filters_by_period_tenant_status_and_kind(admin_client, invoiced):
    cases = {
        "": 4,
        "?period=2024-03": 2,
        "?period=2024-02&status__exact=finalized": 2,
        "?status__exact=draft": 2,
        f"?tenant__id__exact={invoiced['alice'].pk}": 2,
        "?kind__exact=credit_note": 0,
        "?period=nonsense": 0,
        "?q=bob": 2,
    }
    for query, rows in cases.items():
        response = admin_client.get(LIST + query)
        assert response.status_code == 200, query
        assert response.context["cl"].result_count == rows, query
    page = admin_client.get(LIST).content.decode()
    assert "2024-03" in page
    assert reverse("admin:billing_invoice_summary") in page


@pytest.mark.django_db
def test_an_invoice_page_shows_its_lines_and_changes_nothing(admin_client, invoiced):
    invoice = Invoice.objects.get(tenant=invoiced["alice"], period=MARCH)
    url = reverse("admin:billing_invoice_change", args=[invoice.pk])
    response = admin_client.get(url)
    assert response.status_code == 200
    html = response.content.decode()
    for line in invoice.lines.all():
        assert line.description in html
    assert 'name="_save"' not in html
    assert admin_client.post(url, {"note": "edited"}).status_code == 403
    assert Invoice.objects.get(pk=invoice.pk).note == ""
    assert admin_client.get(reverse("admin:billing_invoice_add")).status_code == 403
    assert admin_client.get(reverse("admin:billing_invoice_delete", args=[invoice.pk])).status_code == 403


@pytest.mark.django_db
def test_regenerate_and_finalize_actions_go_through_the_services(admin_client, invoiced, catalog):
    march = list(Invoice.objects.filter(period=MARCH))
    save(usage(invoiced["alice"], catalog["gpt"], at(date(2024, 3, 11)), input_tokens=1_000_000))
    response = action(admin_client, "regenerate_drafts", march[:1])
    assert "2024-03: 0 created, 1 updated, 1 unchanged, 0 finalized (kept)." in messages_of(response)

    response = action(admin_client, "finalize", march)
    assert "2 invoices finalized (each regenerated first)." in messages_of(response)
    assert set(Invoice.objects.filter(period=MARCH).values_list("status", flat=True)) == {"finalized"}


@pytest.mark.django_db
def test_finalizing_an_open_month_is_refused_with_a_message(admin_client, catalog):
    alice = make_tenant("alice")
    now = datetime.now(UTC)
    save(usage(alice, catalog["gpt"], now - timedelta(minutes=5), input_tokens=1000))
    invoices_generate(period=now.date().replace(day=1))
    response = action(admin_client, "finalize", Invoice.objects.all())
    assert any("still open" in message for message in messages_of(response))
    assert Invoice.objects.get().status == "draft"


@pytest.mark.django_db
def test_credit_note_action_cancels_a_finalized_invoice_and_issues_a_new_draft(admin_client, invoiced):
    february = Invoice.objects.get(tenant=invoiced["bob"], period=FEBRUARY)
    response = action(admin_client, "issue_credit_notes", [february])
    assert any("1 credit notes issued" in message for message in messages_of(response))
    documents = Invoice.objects.filter(tenant=invoiced["bob"], period=FEBRUARY).order_by("kind", "sequence")
    assert [(d.kind, d.status, d.total) for d in documents] == [
        ("credit_note", "finalized", -february.total),
        ("invoice", "finalized", february.total),
        ("invoice", "draft", february.total),
    ]


@pytest.mark.django_db
def test_the_export_action_answers_the_csv_of_the_selection(admin_client, invoiced):
    response = action(admin_client, "export_csv", Invoice.objects.filter(period=MARCH))
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="invoices-2024-03.csv"'
    rows = list(csv.DictReader(io.StringIO(response.content.decode(), newline="")))
    assert {row["invoice number"] for row in rows} == set(
        Invoice.objects.filter(period=MARCH).values_list("number", flat=True)
    )
    month = admin_client.get(reverse("admin:billing_invoice_export") + "?period=2024-02")
    assert month.content.decode().count("INV-2024-02-") == len(rows)
    assert admin_client.get(reverse("admin:billing_invoice_export") + "?period=x").status_code == 400


@pytest.mark.django_db
def test_the_finance_summary_gives_revenue_provider_cost_and_margin_per_tenant(admin_client, invoiced):
    SharedCost.objects.create(period=MARCH, description="infra", amount=D("1.00"))
    invoices_generate(period=MARCH, now=CLOSED)
    response = admin_client.get(reverse("admin:billing_invoice_summary") + "?period=2024-03")
    assert response.status_code == 200
    rows = {row["tenant"]: row for row in response.context["rows"]}
    alice = Invoice.objects.get(tenant=invoiced["alice"], period=MARCH)
    usage_lines = alice.lines.filter(line_type__in=["input", "output"])
    provider = sum(line.amount for line in usage_lines)
    shared = alice.lines.get(line_type="shared_cost").amount
    assert rows["alice"]["revenue"] == alice.total
    assert rows["alice"]["provider_cost"] == provider
    assert rows["alice"]["shared_cost"] == shared
    assert rows["alice"]["margin"] == alice.total - provider - shared
    total = response.context["totals"][0]
    assert total["shared_cost"] == D("1.00")
    assert total["revenue"] == sum(i.total for i in Invoice.objects.filter(period=MARCH))
    assert "infra" in response.content.decode()
    assert admin_client.get(reverse("admin:billing_invoice_summary")).status_code == 200  # last month by default
    assert admin_client.get(reverse("admin:billing_invoice_summary") + "?period=13").status_code == 400


@pytest.mark.django_db
def test_the_invoice_list_runs_the_same_queries_for_4_or_40_invoices(admin_client, catalog):
    def queries():
        with CaptureQueriesContext(connection) as ctx:
            assert admin_client.get(LIST).status_code == 200
        return len(ctx.captured_queries)

    plan = Plan.objects.create(name="p", monthly_base_fee=D("1"))
    tenants = [make_tenant(f"t{i}", plan=plan) for i in range(20)]
    for tenant in tenants[:2]:
        save(usage(tenant, catalog["gpt"], at(date(2024, 3, 3)), input_tokens=10))
        save(usage(tenant, catalog["gpt"], at(date(2024, 2, 3)), input_tokens=10))
    invoices_generate(period=MARCH, now=CLOSED)
    invoices_generate(period=FEBRUARY, now=CLOSED)
    few = queries()
    for tenant in tenants:
        save(usage(tenant, catalog["gpt"], at(date(2024, 3, 4)), input_tokens=10))
        save(usage(tenant, catalog["gpt"], at(date(2024, 2, 4)), input_tokens=10))
    invoices_generate(period=MARCH, now=CLOSED)
    invoices_generate(period=FEBRUARY, now=CLOSED)
    assert Invoice.objects.count() == 40
    assert queries() == few


# --- shared cost ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_shared_cost_names_its_month_and_queues_a_regeneration_after_commit(
    admin_client, invoiced, monkeypatch, django_capture_on_commit_callbacks
):
    queued = []
    monkeypatch.setattr(tasks.generate_invoices, "delay", lambda **kwargs: queued.append(kwargs))
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = admin_client.post(
            reverse("admin:billing_sharedcost_add"),
            {"period": "2024-03-17", "description": "GPU nodes", "amount": "120.50", "currency": "USD"},
            follow=True,
        )
    assert response.status_code == 200
    assert len(callbacks) == 1
    assert queued == [{"period": "2024-03"}]
    cost = SharedCost.objects.get()
    assert (cost.period, cost.amount) == (MARCH, D("120.50"))


@pytest.mark.django_db
def test_the_shared_cost_of_a_finalized_month_is_frozen(admin_client, invoiced):
    cost = SharedCost.objects.create(period=FEBRUARY, description="late", amount=D("5.00"))
    page = admin_client.get(reverse("admin:billing_sharedcost_change", args=[cost.pk])).content.decode()
    assert 'name="_save"' not in page
    response = admin_client.post(
        reverse("admin:billing_sharedcost_add"),
        {"period": "2024-02-01", "description": "more", "amount": "1.00", "currency": "USD"},
    )
    assert response.status_code == 200
    assert "are finalized" in response.content.decode()
    assert SharedCost.objects.count() == 1
    assert (
        admin_client.post(reverse("admin:billing_sharedcost_delete", args=[cost.pk]), {"post": "yes"}).status_code
        == 403
    )


# --- rollups and the usage report ----------------------------------------------------------


@pytest.mark.django_db
def test_the_rollup_list_and_the_usage_report(admin_client, invoiced):
    usage_rollup(since=FEBRUARY, until=date(2024, 3, 31), now=CLOSED)
    response = admin_client.get(reverse("admin:billing_usagerollup_changelist"))
    assert response.status_code == 200
    assert response.context["cl"].result_count == UsageRollup.objects.count() == 4
    assert reverse("admin:billing_usagerollup_report") in response.content.decode()

    alice = invoiced["alice"]
    url = reverse("admin:billing_usagerollup_report")
    report = admin_client.get(url, {"tenant": alice.pk, "start": "2024-02-01", "end": "2024-03-31"})
    assert report.status_code == 200
    expected = usage_summary(tenant_id=alice.id, start=FEBRUARY, end=date(2024, 3, 31))
    assert report.context["summary"] == {**expected, "tenant": "alice"}
    assert expected["totals"]["requests"] == 2
    assert expected["totals"]["cost"] in report.content.decode()
    refused = admin_client.get(url, {"tenant": alice.pk, "start": "2024-03-01", "end": "2024-02-01"})
    assert refused.context["summary"] is None
    assert "on or after the start" in refused.content.decode()
