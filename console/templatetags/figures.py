"""How the console writes figures: an invoice's quantities, prices and amounts with the digits
that matter, and the admin's change lists with numbers right-aligned and grouped by thousands.

Display only. The invoice figures are the finance CSV's (billing/exports.py) with thousands
separators, so that finance can hold the page against the export line by line
(tests/test_invoice_page.py checks it).
"""

import re
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

from django import template
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from billing.invoicing import TOKEN_TYPES
from billing.models import Invoice, InvoiceLine
from billing.selectors import CostCentreTotal, invoice_cost_centres

register = template.Library()

CENT = Decimal("0.01")


def _group(text: str) -> str:
    """ "-1234567.089" → "-1,234,567.089": thousands separators on the whole part only."""
    sign = "-" if text.startswith("-") else ""
    whole, dot, fraction = text.lstrip("-").partition(".")
    return f"{sign}{int(whole):,}{dot}{fraction}"


@register.filter
def exact(value) -> str:
    """Every significant digit and no more: Decimal("42690.000000000000") → "42,690",
    Decimal("3.550348350000") → "3.55034835". The CSV's quantities, grouped."""
    if value is None or value == "":
        return "—"
    text = f"{Decimal(value).normalize():f}"
    return _group("0" if text == "-0" else text)


@register.filter
def price(value) -> str:
    """At least the cents, then only the digits that matter: 1.000000000000 → "1.00",
    0.075000000000 → "0.075". The CSV's unit prices, grouped."""
    if value is None or value == "":
        return "—"
    text = f"{Decimal(value).normalize():f}"
    whole, _, fraction = text.partition(".")
    return _group(f"{whole}.{fraction.ljust(2, '0')}")


@register.filter
def cents(value) -> str:
    """To the cent, half-up: the CSV's amounts, grouped. Stored amounts already are."""
    if value is None or value == "":
        return "—"
    amount = Decimal(value).quantize(CENT, rounding=ROUND_HALF_UP)
    return _group(f"{amount if amount else abs(amount):f}")  # no "-0.00" (a credit note's zero line)


# --- the invoice page ------------------------------------------------------------------------


@dataclass
class InvoiceSheet:
    """An invoice or credit note laid out for reading: charges, then the allowance credit under
    the subtotal, then the total; the documents that cancel or replace it."""

    invoice: Invoice
    charges: list[InvoiceLine] = field(default_factory=list)
    credits: list[InvoiceLine] = field(default_factory=list)
    credit_notes: list[Invoice] = field(default_factory=list)
    replaced_by: Invoice | None = None
    cost_centres: list[CostCentreTotal] = field(default_factory=list)

    @property
    def usage_amount(self) -> Decimal:
        """The usage lines' amounts, which the cost centres add up to."""
        return sum((line.amount for line in self.charges if line.line_type in USAGE_TYPES), Decimal(0))

    @property
    def subtotal(self) -> Decimal:
        """The charges before credits. (The stored `subtotal`, the CSV's "invoice subtotal",
        is the sum of every line, credits included: today it always equals the total.)"""
        return sum((line.amount for line in self.charges), Decimal(0))

    @property
    def credited(self) -> Decimal:
        return sum((note.total for note in self.credit_notes), Decimal(0))

    @property
    def balance(self) -> Decimal:
        """What is left to pay once the credit notes are counted."""
        return self.invoice.total + self.credited


CREDIT_TYPES = frozenset({InvoiceLine.Type.ALLOWANCE_CREDIT})
USAGE_TYPES = frozenset(str(line_type) for line_type in TOKEN_TYPES)


@register.simple_tag
def invoice_sheet(invoice: Invoice) -> InvoiceSheet:
    """Four small queries: the lines, the cost centres, the credit notes against it, the invoice
    replacing it."""
    sheet = InvoiceSheet(invoice=invoice, cost_centres=invoice_cost_centres(invoice_id=invoice.id))
    for line in invoice.lines.order_by("position"):
        (sheet.credits if line.line_type in CREDIT_TYPES else sheet.charges).append(line)
    if invoice.kind == Invoice.Kind.INVOICE:
        sheet.credit_notes = list(invoice.credit_notes.order_by("sequence"))
        if sheet.credit_notes:
            sheet.replaced_by = (
                Invoice.objects.filter(
                    tenant_id=invoice.tenant_id,
                    period=invoice.period,
                    kind=Invoice.Kind.INVOICE,
                    sequence__gt=invoice.sequence,
                )
                .order_by("sequence")
                .first()
            )
    return sheet


# --- change lists: numeric columns -----------------------------------------------------------

_CELL = re.compile(r'^<(td|th)(?: class="([^"]*)")?>(.*)</\1>$', re.DOTALL)
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")
_BLANK = frozenset({"", "-", "—"})


@dataclass(frozen=True)
class ChangeListTable:
    headers: list[tuple[dict, SafeString]]  # (Django's header, its class attribute)
    rows: list[tuple[list, list[SafeString]]]  # (Django's result, its cells)


def _class_attribute(classes: str) -> SafeString:
    return format_html(' class="{}"', classes) if classes else mark_safe("")  # noqa: S308 (a constant)


@register.simple_tag
def changelist_table(results, result_headers) -> ChangeListTable:
    """Django's change-list rows with every numeric column marked: a column whose cells are all
    plain numbers (or empty) gets the class "num" on its header and cells, and its numbers
    thousands separators. Django writes `1000000`; staff read `1,000,000`, right-aligned."""
    parsed = [[_CELL.match(str(cell)) for cell in result] for result in results]
    width = len(result_headers)
    numeric = []
    for column in range(width):
        contents = [row[column].group(3).strip() for row in parsed if column < len(row) and row[column]]
        numbers = [text for text in contents if text not in _BLANK]
        numeric.append(bool(numbers) and len(contents) == len(parsed) and all(_NUMBER.match(text) for text in numbers))
    rows = []
    for result, cells in zip(results, parsed, strict=True):
        out = []
        for column, (cell, match) in enumerate(zip(result, cells, strict=True)):
            if column < width and numeric[column] and match:
                tag, classes, text = match.group(1), (match.group(2) or ""), match.group(3).strip()
                shown = _group(text) if _NUMBER.match(text) else text
                cell = format_html("<{}{}>{}</{}>", tag, _class_attribute(f"{classes} num".strip()), shown, tag)
            out.append(cell)
        rows.append((result, out))
    headers = []
    for header, is_numeric in zip(result_headers, numeric, strict=True):
        classes = " ".join(_header_classes(header))
        headers.append((header, _class_attribute(f"{classes} num".strip() if is_numeric else classes)))
    return ChangeListTable(headers=headers, rows=rows)


_CLASS_ATTRIBUTE = re.compile(r'class="([^"]*)"')


def _header_classes(header: dict) -> list[str]:
    match = _CLASS_ATTRIBUTE.search(str(header.get("class_attrib", "")))
    return match.group(1).split() if match else []
