"""The invoice's cost centres (issue 14 part 6): every usage line split per project, the shares of
a line adding up to it to the cent, a project's shares close to what its records cost; kept with
the document (immutable once finalized, negated on a credit note), shown on the invoice page, and
in the finance CSV's `project` column, which opens in a spreadsheet as is.
"""

import csv
import io
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction
from django.urls import reverse

from billing.exports import CSV_COLUMNS, invoices_csv_write
from billing.invoicing import TOKEN_TYPES
from billing.models import Invoice, InvoiceCostCentre, InvoiceLine, UsageRecord
from billing.selectors import invoice_cost_centres, money_str
from billing.services import credit_note_create, invoices_generate
from tests.attribution_fixtures import attribution_world

MARCH = date(2025, 3, 1)
CLOSED = datetime(2025, 4, 20, tzinfo=UTC)
D = Decimal
USAGE_TYPES = {str(t) for t in TOKEN_TYPES}


@pytest.fixture
def world(catalog):
    world = attribution_world(catalog)
    invoices_generate(period=MARCH, now=CLOSED)
    world["invoice"] = Invoice.objects.get(tenant=world["alice"], period=MARCH)
    return world


def _usage_lines(invoice) -> list[InvoiceLine]:
    return list(invoice.lines.filter(line_type__in=USAGE_TYPES).prefetch_related("cost_centres"))


def test_the_shares_of_every_usage_line_add_up_to_the_line(world):
    lines = _usage_lines(world["invoice"])
    assert lines
    for line in lines:
        shares = list(line.cost_centres.all())
        assert shares, line
        assert sum(s.amount for s in shares) == line.amount, line
        assert sum(s.quantity for s in shares) == line.quantity, line
    # Only usage lines are split: markup, base fee and credits have no cost centres.
    assert not InvoiceCostCentre.objects.filter(line__invoice=world["invoice"]).exclude(line__line_type__in=USAGE_TYPES)


def test_the_projects_totals_add_up_to_the_usage_lines_and_follow_their_records(world):
    invoice = world["invoice"]
    centres = {c.project: c for c in invoice_cost_centres(invoice_id=invoice.id)}
    assert set(centres) == {"search", "chat", ""}
    usage_amount = sum(line.amount for line in _usage_lines(invoice))
    assert sum(c.amount for c in centres.values()) == usage_amount
    # Each project's amount is its records' exact cost, to within half a cent per line it is on.
    billed = UsageRecord.objects.filter(tenant=world["alice"], cache_hit=False, price__isnull=False)
    for project, centre in centres.items():
        records = billed.filter(project__name=project) if project else billed.filter(project__isnull=True)
        exact = sum(r.cost for r in records)
        lines_on = InvoiceCostCentre.objects.filter(line__invoice=invoice, project=project).count()
        assert abs(centre.amount - exact) <= D("0.005") * lines_on, project
        assert centre.tokens == sum(r.input_tokens + r.output_tokens for r in records)
    # bob's invoice knows his project only, whatever alice's are called.
    bobs = Invoice.objects.get(tenant=world["bob"], period=MARCH)
    assert [c.project for c in invoice_cost_centres(invoice_id=bobs.id)] == ["search"]


def test_regenerating_writes_nothing_and_a_renamed_project_updates_the_draft(world):
    invoice = world["invoice"]
    before = set(InvoiceCostCentre.objects.filter(line__invoice=invoice).values_list("id", "project", "amount"))
    result = invoices_generate(period=MARCH, now=CLOSED)
    assert result.created == result.updated == 0
    assert set(InvoiceCostCentre.objects.filter(line__invoice=invoice).values_list("id", "project", "amount")) == before
    world["chat"].name = "assistant"
    world["chat"].save()
    result = invoices_generate(period=MARCH, now=CLOSED)
    assert result.updated == 1  # alice's draft: the same lines, a cost centre renamed
    assert {c.project for c in invoice_cost_centres(invoice_id=invoice.id)} == {"search", "assistant", ""}


def test_a_finalized_invoices_cost_centres_never_change_and_a_credit_note_negates_them(world):
    invoices_generate(period=MARCH, finalize=True, now=CLOSED)
    invoice = Invoice.objects.get(pk=world["invoice"].pk)
    assert invoice.is_finalized
    kept = {c.project: c.amount for c in invoice_cost_centres(invoice_id=invoice.id)}
    world["chat"].name = "renamed"
    world["chat"].save()
    invoices_generate(period=MARCH, now=CLOSED)
    assert {c.project: c.amount for c in invoice_cost_centres(invoice_id=invoice.id)} == kept
    with pytest.raises(IntegrityError), transaction.atomic():
        InvoiceCostCentre.objects.filter(line__invoice=invoice).update(amount=D("0"))
    with pytest.raises(IntegrityError), transaction.atomic():
        InvoiceCostCentre.objects.filter(line__invoice=invoice).delete()
    note = credit_note_create(invoice_id=invoice.id, reason="test", now=CLOSED)
    assert {c.project: c.amount for c in invoice_cost_centres(invoice_id=note.id)} == {
        project: -amount for project, amount in kept.items()
    }


def test_the_invoice_page_shows_the_cost_centres(admin_client, world):
    invoice = world["invoice"]
    response = admin_client.get(reverse("admin:billing_invoice_change", args=[invoice.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="invoice-cost-centres"' in html
    for centre in invoice_cost_centres(invoice_id=invoice.id):
        assert f'data-project="{centre.project}"' in html
    assert "(no project)" in html
    usage_amount = sum(line.amount for line in _usage_lines(invoice))
    assert f'id="invoice-usage-amount">{usage_amount:,.2f}<' in html


def _csv() -> tuple[str, list[list[str]]]:
    out = io.StringIO(newline="")
    invoices_csv_write(invoices=Invoice.objects.filter(period=MARCH), out=out)
    text = out.getvalue()
    return text, list(csv.reader(io.StringIO(text, newline="")))


def test_the_finance_csv_has_a_project_column_and_opens_in_a_spreadsheet_as_is(world):
    world["chat"].name = "=HYPERLINK(1)"  # not a slug: only the database's word for it counts here
    world["chat"].save()
    invoices_generate(period=MARCH, now=CLOSED)
    text, rows = _csv()
    header, body = rows[0], rows[1:]
    assert header == CSV_COLUMNS
    assert header[-1] == "project"
    assert all(len(row) == len(header) for row in body)
    for row in rows:
        for cell in row:
            if cell[:1] in ("=", "+", "-", "@"):
                assert cell[1:].replace(".", "", 1).isdigit(), cell  # only a negative number may
    records = [dict(zip(header, row, strict=True)) for row in body]
    alice = [r for r in records if r["tenant"] == "alice"]
    assert {r["project"] for r in alice if r["line type"] in USAGE_TYPES} == {"search", "'=HYPERLINK(1)", ""}
    assert all(r["project"] == "" for r in alice if r["line type"] not in USAGE_TYPES)
    # Rows still add up to each invoice's total, and a usage line's rows to the line.
    for number in {r["invoice number"] for r in records}:
        mine = [r for r in records if r["invoice number"] == number]
        assert sum(D(r["amount"]) for r in mine) == D(mine[0]["invoice total"])
    invoice = world["invoice"]
    for line in _usage_lines(invoice):
        rows_of_line = [
            r
            for r in alice
            if (r["line type"], r["model"], r["unit price"]) == (line.line_type, line.model, money_str(line.unit_price))
        ]
        assert sum(D(r["amount"]) for r in rows_of_line) == line.amount
        assert sum(D(r["quantity"]) for r in rows_of_line) == line.quantity
