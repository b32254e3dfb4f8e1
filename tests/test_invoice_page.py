"""The invoice page reads as an invoice and says what the finance CSV says: every line's
quantity, unit, unit price and amount, and the total, are the CSV's figures (with thousands
separators); no number carries digits that do not matter; credit notes and the invoice they
cancel link to each other. Also the console's small things: numeric change-list columns,
money with its currency, the favicon."""

import csv
import io
import re
from datetime import UTC, date, datetime
from decimal import Decimal
from html.parser import HTMLParser

import pytest
from django.urls import reverse

from billing.exports import invoices_csv_write
from billing.models import Invoice, Plan, SharedCost
from billing.services import credit_note_create, invoices_generate
from console.templatetags.figures import cents, exact, price
from tests.billing_fixtures import at, save, usage
from tests.conftest import make_tenant

D = Decimal
MARCH = date(2024, 3, 1)
CLOSED = datetime(2024, 4, 20, tzinfo=UTC)


@pytest.fixture
def month(catalog):
    """alice: usage of three models, markup, base fee, allowance credit, a shared cost; bob's
    invoice finalized, credited, and drafted again."""
    plan = Plan.objects.create(
        name="business", monthly_base_fee=D("1250.00"), included_allowance=D("1.00"), markup_percent=D("12.50")
    )
    alice, bob = make_tenant("alice", plan=plan), make_tenant("bob", plan=plan)
    save(
        usage(alice, catalog["gpt"], at(date(2024, 3, 2)), input_tokens=1_234_567, cached=34_567, output_tokens=42_690),
        usage(alice, catalog["claude"], at(date(2024, 3, 21)), input_tokens=50_000, cached=10_000, cache_write=5_000),
        usage(alice, catalog["azure"], at(date(2024, 3, 22)), input_tokens=3_000, output_tokens=700),
        usage(bob, catalog["azure"], at(date(2024, 3, 31), 23, 59), input_tokens=400_000, output_tokens=30_000),
    )
    SharedCost.objects.create(period=MARCH, description="Cluster", amount=D("99.99"))
    invoices_generate(period=MARCH, finalize=True, now=CLOSED)
    first = Invoice.objects.get(tenant=bob)
    note = credit_note_create(invoice_id=first.id, reason="wrong plan", now=CLOSED)
    invoices_generate(period=MARCH, now=CLOSED)  # bob's corrected draft
    return {
        "alice": Invoice.objects.get(tenant=alice),
        "bob": first,
        "note": note,
        "corrected": Invoice.objects.get(tenant=bob, kind=Invoice.Kind.INVOICE, sequence=2),
    }


class _Sheet(HTMLParser):
    """The invoice's lines (cells by class) and its figures by id, from the page's HTML."""

    FIELDS = ("quantity", "unit", "unit-price", "amount")

    def __init__(self):
        super().__init__()
        self.lines: list[dict] = []
        self.ids: dict[str, str] = {}
        self.links: list[str] = []
        self._line: dict | None = None
        self._field: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "tr" and "invoice-line" in classes:
            self._line = {"position": int(attrs["data-position"]), "type": attrs["data-type"]}
            self.lines.append(self._line)
        elif tag == "td" and self._line is not None:
            self._field = next((name for name in self.FIELDS if name in classes), None)
            if self._field:
                self._line[self._field] = ""
        elif attrs.get("id", "").startswith("invoice-"):
            self._field = "#" + attrs["id"]
            self.ids[self._field] = ""
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])

    def handle_endtag(self, tag):
        if tag == "tr":
            self._line = None
        if tag in ("td", "span", "dd", "p"):
            self._field = None

    def handle_data(self, data):
        if self._field and self._field.startswith("#"):
            self.ids[self._field] += data
        elif self._field and self._line is not None:
            self._line[self._field] += data.strip()


def page_of(admin_client, invoice) -> tuple[_Sheet, str]:
    response = admin_client.get(reverse("admin:billing_invoice_change", args=[invoice.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    sheet = _Sheet()
    sheet.feed(html)
    return sheet, html


def csv_rows() -> list[dict]:
    out = io.StringIO(newline="")
    invoices_csv_write(invoices=Invoice.objects.filter(period=MARCH), out=out)
    return list(csv.DictReader(io.StringIO(out.getvalue(), newline="")))


def ungroup(text: str) -> str:
    return text.replace(",", "")


@pytest.mark.django_db
def test_every_figure_on_the_invoice_page_is_the_csvs(admin_client, month):
    rows = csv_rows()
    for invoice in Invoice.objects.filter(period=MARCH):
        sheet, _ = page_of(admin_client, invoice)
        mine = [row for row in rows if row["invoice number"] == invoice.number]
        lines = sorted(sheet.lines, key=lambda line: line["position"])
        shown = [
            (line["type"], *(ungroup(line[name]) for name in ("quantity", "unit", "unit-price", "amount")))
            for line in lines
        ]
        assert shown == [(r["line type"], r["quantity"], r["unit"], r["unit price"], r["amount"]) for r in mine], (
            invoice.number
        )
        total = ungroup(sheet.ids["#invoice-total"]).split()
        assert total == [mine[0]["invoice total"], invoice.currency]
        # Subtotal (the charges) and credits (the allowance) add up to the total, to the cent.
        credits = sum(D(ungroup(line["amount"])) for line in lines if line["type"] == "allowance_credit")
        assert D(ungroup(sheet.ids["#invoice-subtotal"])) + credits == D(mine[0]["invoice total"])
        assert sheet.ids["#invoice-number"] == invoice.number
        assert sheet.ids["#invoice-period"] == "2024-03-01 to 2024-03-31"


@pytest.mark.django_db
def test_the_invoice_reads_as_an_invoice_with_only_the_digits_that_matter(admin_client, month):
    sheet, html = page_of(admin_client, month["alice"])
    assert "alice" in sheet.ids["#invoice-tenant"]
    assert sheet.ids["#invoice-status"].startswith("Finalized on 2024-04-20")
    figures = [line[name] for line in sheet.lines for name in _Sheet.FIELDS if name != "unit"]
    assert figures, "no lines found"
    for figure in figures + [sheet.ids["#invoice-total"], sheet.ids["#invoice-subtotal"]]:
        # no trailing zeros past the cents, no 12-place decimals
        assert not re.search(r"\d\.\d\d0+\b|\.\d*0{3,}\b", figure), figure
    by_type = {line["type"]: line for line in sheet.lines}
    assert by_type["output"]["quantity"] == "42,690"  # tokens, grouped by thousands
    assert by_type["input"]["unit-price"] == "0.15"  # per 1M tokens: not 0.150000000000
    assert by_type["cached_input"]["unit-price"] == "0.075"
    assert by_type["base_fee"]["amount"] == "1,250.00"
    assert "1,2" in sheet.ids["#invoice-total"]
    assert sheet.ids["#invoice-total"].endswith("USD")
    assert "window.print()" in html
    assert "@media print" not in html


@pytest.mark.django_db
def test_an_invoice_and_its_credit_note_link_to_each_other(admin_client, month):
    bob, note, corrected = month["bob"], month["note"], month["corrected"]
    sheet, _ = page_of(admin_client, bob)
    assert reverse("admin:billing_invoice_change", args=[note.pk]) in sheet.links
    assert reverse("admin:billing_invoice_change", args=[corrected.pk]) in sheet.links
    assert D(ungroup(sheet.ids["#invoice-balance"]).split()[0]) == bob.total + note.total == 0
    note_sheet, _ = page_of(admin_client, note)
    assert reverse("admin:billing_invoice_change", args=[bob.pk]) in note_sheet.links
    assert note_sheet.ids["#invoice-corrects"] == bob.number
    assert ungroup(note_sheet.ids["#invoice-total"]).split()[0] == f"{note.total:.2f}"


@pytest.mark.django_db
def test_the_invoice_page_takes_a_handful_of_queries(admin_client, month, django_assert_max_num_queries):
    with django_assert_max_num_queries(14):
        admin_client.get(reverse("admin:billing_invoice_change", args=[month["bob"].pk]))


def test_figures_keep_the_digits_that_matter():
    assert exact(D("42690.000000000000")) == "42,690"
    assert exact(D("3.550348350000")) == "3.55034835"
    assert exact(D("-1234567.5")) == "-1,234,567.5"
    assert price(D("1.000000000000")) == "1.00"
    assert price(D("0.075000000000")) == "0.075"
    assert price(D("-1250.5")) == "-1,250.50"
    assert cents(D("1234567.125")) == "1,234,567.13"
    assert cents(D("-0.00")) == "0.00"


@pytest.mark.django_db
def test_the_finance_summary_writes_money_to_the_cent_with_thousands_separators(admin_client, month):
    html = admin_client.get(reverse("admin:billing_invoice_summary") + "?period=2024-03").content.decode()
    assert month["alice"].total > 1000
    assert f'<td class="num">{cents(month["alice"].total)}</td>' in html
    assert re.search(r'<td class="num">\d{1,3}(,\d{3})+\.\d\d</td>', html)


# --- the console's change lists and small things ---------------------------------------------------


@pytest.mark.django_db
def test_numeric_columns_are_grouped_and_right_aligned_and_money_has_its_currency(admin_client, month):
    tenant = month["alice"].tenant
    tenant.tokens_per_minute = 2_000_000
    tenant.save(update_fields=["tokens_per_minute"])
    html = admin_client.get(reverse("admin:tenants_tenant_changelist")).content.decode()
    assert re.search(r'<td class="field-tokens_per_minute num">2,000,000</td>', html)
    assert re.search(r'<th scope="col" class="[^"]*column-tokens_per_minute[^"]*num"', html)
    assert 'class="overview-link"' in html
    assert re.search(r'<td class="field-slug">|<th class="field-slug">', html)  # text columns untouched
    listing = admin_client.get(reverse("admin:billing_invoice_changelist") + "?period=2024-03").content.decode()
    assert f">{cents(month['alice'].total)} USD<" in listing
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", listing)  # ISO dates, not "April 20, 2024, 12:00 a.m."


@pytest.mark.django_db
def test_the_favicon_is_served_by_us_on_every_page(client, admin_client):
    response = client.get("/favicon.ico")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/x-icon"
    body = b"".join(response) if response.streaming else response.content
    assert body[:4] == b"\x00\x00\x01\x00"  # an ICO file
    assert "max-age" in response["Cache-Control"]
    assert client.post("/favicon.ico").status_code == 405
    page = admin_client.get(reverse("admin:index")).content.decode()
    assert re.search(r'<link rel="icon" type="image/svg\+xml" href="[^"]*console/favicon\.svg">', page)
