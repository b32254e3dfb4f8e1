"""The finance CSV (`export_invoices`): the documented columns, spreadsheet-safe, stable, and
totals that match the invoices and the admin's finance summary."""

import csv
import io
import re
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from billing.exports import CSV_COLUMNS
from billing.models import Invoice, Plan, SharedCost
from billing.services import credit_note_create, invoices_generate
from tenants.models import CatalogModel
from tests.billing_fixtures import add_price, at, save, usage
from tests.conftest import make_tenant

D = Decimal
MARCH = date(2024, 3, 1)
CLOSED = datetime(2024, 4, 20, tzinfo=UTC)
HEADER = (
    "invoice number,tenant,period start,period end,status,currency,line type,model,quantity,unit,"
    "unit price,amount,invoice subtotal,invoice total,project"
)


@pytest.fixture
def month(catalog):
    plan = Plan.objects.create(
        name="business", monthly_base_fee=D("100.00"), included_allowance=D("1.00"), markup_percent=D("12.50")
    )
    alice, bob, carol = (make_tenant(slug, plan=plan) for slug in ("alice", "bob", "carol"))
    add_price(catalog["gpt"], datetime(2024, 3, 15, tzinfo=UTC), input_per_1m="0.20", output_per_1m="0.80")
    formula = CatalogModel.objects.create(name="=HYPERLINK(1)", provider="openai")
    add_price(formula, datetime(2024, 1, 1, tzinfo=UTC), input_per_1m="1", output_per_1m="1")
    save(
        usage(alice, catalog["gpt"], at(date(2024, 3, 2)), input_tokens=1_234_567, cached=34_567, output_tokens=9_999),
        usage(alice, catalog["gpt"], at(date(2024, 3, 20)), input_tokens=2_000_000, output_tokens=5),
        usage(alice, catalog["claude"], at(date(2024, 3, 21)), input_tokens=50_000, cached=10_000, cache_write=5_000),
        usage(bob, catalog["azure"], at(date(2024, 3, 31), 23, 59), input_tokens=400_000, output_tokens=30_000),
        usage(carol, formula, at(date(2024, 3, 5)), input_tokens=1000),
    )
    SharedCost.objects.create(period=MARCH, description="Cluster", amount=D("99.99"))
    invoices_generate(period=MARCH, finalize=True, now=CLOSED)
    first = Invoice.objects.get(tenant=bob)
    credit_note_create(invoice_id=first.id, reason="wrong", now=CLOSED)
    invoices_generate(period=MARCH, now=CLOSED)  # bob's corrected draft
    return {"alice": alice, "bob": bob, "carol": carol}


def export(tmp_path, period="2024-03") -> bytes:
    path = tmp_path / "march.csv"
    call_command("export_invoices", "--period", period, "--output", str(path), stderr=io.StringIO())
    return path.read_bytes()


@pytest.mark.django_db
def test_the_csv_has_the_documented_header_and_one_row_per_line(tmp_path, month):
    data = export(tmp_path)
    text = data.decode("utf-8")  # strict: it is UTF-8
    assert not text.startswith("\ufeff")
    assert text.split("\r\n")[0] == HEADER == ",".join(CSV_COLUMNS)
    assert text.endswith("\r\n")
    assert "\n" not in text.replace("\r\n", "")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    invoices = Invoice.objects.filter(period=MARCH)
    assert len(rows) == sum(invoice.lines.count() for invoice in invoices)
    assert [row["invoice number"] for row in rows] == sorted(row["invoice number"] for row in rows)
    assert {row["invoice number"] for row in rows} == set(invoices.values_list("number", flat=True))
    for row in rows:
        assert len(row) == len(CSV_COLUMNS) == 15
        for column in ("amount", "invoice subtotal", "invoice total"):
            assert re.fullmatch(r"-?\d+\.\d\d", row[column]), row
        assert (row["period start"], row["period end"]) == ("2024-03-01", "2024-03-31")
        assert row["currency"] == "USD"


@pytest.mark.django_db
def test_usage_rows_carry_quantity_and_full_precision_unit_prices(tmp_path, month):
    rows = list(csv.DictReader(io.StringIO(export(tmp_path).decode(), newline="")))
    alice = [row for row in rows if row["tenant"] == "alice"]
    got = [(r["line type"], r["model"], r["quantity"], r["unit"], r["unit price"], r["amount"]) for r in alice]
    assert got[:3] == [
        ("input", "claude-test", "35000", "1M tokens", "1.00", "0.04"),
        ("cached_input", "claude-test", "10000", "1M tokens", "0.10", "0.00"),
        ("cache_write", "claude-test", "5000", "1M tokens", "1.25", "0.01"),
    ]
    gpt = [g for g in got if g[1] == "gpt-test"]
    assert gpt == [
        ("input", "gpt-test", "1200000", "1M tokens", "0.15", "0.18"),
        ("cached_input", "gpt-test", "34567", "1M tokens", "0.075", "0.00"),
        ("output", "gpt-test", "9999", "1M tokens", "0.60", "0.01"),
        ("input", "gpt-test", "2000000", "1M tokens", "0.20", "0.40"),  # the price from March 15
        ("output", "gpt-test", "5", "1M tokens", "0.80", "0.00"),
    ]
    markup = next(r for r in alice if r["line type"] == "markup")
    exact = Invoice.objects.get(tenant=month["alice"], period=MARCH).provider_cost
    assert (markup["quantity"], markup["unit"], markup["unit price"]) == (f"{exact.normalize():f}", "USD", "0.125")
    for row in rows:
        if row["unit"] == "1M tokens":
            exact = D(row["quantity"]) * D(row["unit price"]) / 1_000_000
            assert abs(D(row["amount"]).copy_abs() - exact.copy_abs()) <= D("0.005")


@pytest.mark.django_db
def test_invoice_totals_in_the_csv_are_the_sums_of_their_lines_and_match_the_admin(tmp_path, month, admin_client):
    rows = list(csv.DictReader(io.StringIO(export(tmp_path).decode(), newline="")))
    totals: dict[str, Decimal] = {}
    sums: dict[str, Decimal] = {}
    for row in rows:
        totals[row["invoice number"]] = D(row["invoice total"])
        sums[row["invoice number"]] = sums.get(row["invoice number"], D(0)) + D(row["amount"])
        assert row["invoice subtotal"] == row["invoice total"]
    assert totals == sums
    assert totals == {i.number: i.total for i in Invoice.objects.filter(period=MARCH)}
    credit = next(number for number in totals if number.startswith("CN-"))
    assert totals[credit] < 0
    # Bob's credited share and his corrected draft's cancel out: the month's shares add up to the cost.
    assert sum(D(r["amount"]) for r in rows if r["line type"] == "shared_cost") == D("99.99")

    response = admin_client.get(reverse("admin:billing_invoice_summary") + "?period=2024-03")
    assert response.status_code == 200
    revenue = sum(row["revenue"] for row in response.context["rows"])
    assert revenue == sum(totals.values()) == response.context["totals"][0]["revenue"]
    # The admin's list shows the same totals, invoice by invoice.
    listing = admin_client.get(reverse("admin:billing_invoice_changelist") + "?period=2024-03")
    shown = {invoice.number: invoice.total for invoice in listing.context["cl"].result_list}
    assert shown == totals


@pytest.mark.django_db
def test_text_a_spreadsheet_would_run_as_a_formula_is_defused(tmp_path, month):
    rows = list(csv.DictReader(io.StringIO(export(tmp_path).decode(), newline="")))
    models = {row["model"] for row in rows if row["tenant"] == "carol"}
    assert "'=HYPERLINK(1)" in models
    assert not any(value.startswith("=") for row in rows for value in row.values())


@pytest.mark.django_db
def test_the_export_is_stable_and_goes_to_standard_output_without_output(tmp_path, month):
    first = export(tmp_path)
    assert export(tmp_path) == first
    out = io.StringIO()
    call_command("export_invoices", "--period", "2024-03", stdout=out, stderr=io.StringIO())
    assert out.getvalue().encode() == first


@pytest.mark.django_db
def test_an_empty_month_is_a_header_and_a_bad_period_is_refused(tmp_path):
    assert export(tmp_path, "2023-01") == (HEADER + "\r\n").encode()
    with pytest.raises(CommandError, match="YYYY-MM"):
        call_command("export_invoices", "--period", "2024-3", stderr=io.StringIO())
