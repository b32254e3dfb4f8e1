"""The finance CSV of invoices (`export_invoices`, docs/design.md#management-commands; columns in the README).

One row per invoice line (an invoice without lines gets one row with the line columns empty),
except that a usage line is split into one row per project (cost centre: `project`, the last
column, empty for keys without a project), each with the project's tokens and its share of the
line's amount, so that the amounts of an invoice's rows still add up to its total. Lines that are
not usage (markup, fees, credits) and invoices finalized before cost centres existed have one
row with `project` empty. UTF-8, one header row, CRLF line ends, ordered by period, invoice
number, line position and project.
Amounts are plain decimals with two places; quantities and unit prices carry their full
precision without trailing zeros. Text that a spreadsheet would take for a formula is quoted
with a leading apostrophe (billing/csvsafe.py, like every CSV the project writes).
"""

from collections.abc import Iterable
from datetime import date
from decimal import Decimal
from typing import TextIO

from django.db.models import QuerySet

from tenants.models import Tenant

from .csvsafe import csv_writer
from .models import Invoice, InvoiceCostCentre, InvoiceLine
from .periods import month_end
from .selectors import money_str, usage_by_end_user

CSV_COLUMNS = [
    "invoice number",
    "tenant",
    "period start",
    "period end",
    "status",
    "currency",
    "line type",
    "model",
    "quantity",
    "unit",
    "unit price",
    "amount",
    "invoice subtotal",
    "invoice total",
    "project",  # added with issue 14: appended, so that columns read by position keep theirs
]


def _plain(value: Decimal) -> str:
    """Full precision, no exponent, no trailing zeros: "1234567", "0.075", "12.3456789"."""
    text = f"{value.normalize():f}"
    return "0" if text in ("-0", "0") else text


def _cents(value: Decimal) -> str:
    return f"{value:.2f}"


def _invoice_columns(invoice: Invoice) -> list[str]:
    return [
        invoice.number,
        invoice.tenant.slug,
        invoice.period.isoformat(),
        invoice.period_end.isoformat(),
        invoice.status,
        invoice.currency,
    ]


def _rows(invoices: QuerySet[Invoice]) -> Iterable[list[str]]:
    lines: dict[int, list[InvoiceLine]] = {}
    for line in InvoiceLine.objects.filter(invoice__in=invoices).order_by("invoice_id", "position"):
        lines.setdefault(line.invoice_id, []).append(line)
    centres: dict[int, list[InvoiceCostCentre]] = {}
    for centre in InvoiceCostCentre.objects.filter(line__invoice__in=invoices).order_by("line_id", "project"):
        centres.setdefault(centre.line_id, []).append(centre)
    for invoice in invoices.select_related("tenant").order_by("period", "number"):
        head = _invoice_columns(invoice)
        tail = [_cents(invoice.subtotal), _cents(invoice.total)]
        if not lines.get(invoice.id):
            yield [*head, "", "", "", "", "", "", *tail, ""]
            continue
        for line in lines[invoice.id]:
            unit_price = money_str(line.unit_price) if line.unit_price >= 0 else "-" + money_str(-line.unit_price)
            parts = [(c.project, c.quantity, c.amount) for c in centres.get(line.id, [])]
            for project, quantity, amount in parts or [("", line.quantity, line.amount)]:
                yield [
                    *head,
                    line.line_type,
                    line.model,
                    _plain(quantity),
                    line.unit,
                    unit_price,
                    _cents(amount),
                    *tail,
                    project,
                ]


def invoices_csv_write(*, invoices: QuerySet[Invoice], out: TextIO) -> int:
    """Write the CSV of these invoices to `out` (opened with newline=""); returns the data rows."""
    writer = csv_writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    count = 0
    for row in _rows(invoices):
        writer.writerow(row)
        count += 1
    return count


# --- usage by end user (`export_end_user_usage`, the tenant overview's link) --------------------

END_USER_CSV_COLUMNS = [
    "tenant",
    "period start",
    "period end",
    "end user",
    "requests",
    "errors",
    "input tokens",
    "output tokens",
    "cost",
]


def end_user_usage_csv_write(*, tenant: Tenant, period: date, out: TextIO) -> int:
    """Write a tenant's usage of a month per end user to `out` (opened with newline=""); returns
    the data rows. One row per end user, largest cost first; requests that named no end user are
    one row with "end user" empty. Cost is the exact provider cost (not rounded: an end user's
    month is often a fraction of a cent). The same conventions as the invoice CSV otherwise.

    Raises `billing.selectors.UsageGroupingUnavailable` when a day of the month was pruned.
    """
    usages = usage_by_end_user(tenant_id=tenant.id, period=period)
    writer = csv_writer(out, lineterminator="\r\n")
    writer.writerow(END_USER_CSV_COLUMNS)
    first, last = period.isoformat(), month_end(period).isoformat()
    for usage in usages:
        writer.writerow(
            [
                tenant.slug,
                first,
                last,
                usage.end_user,
                usage.requests,
                usage.errors,
                usage.input_tokens,
                usage.output_tokens,
                money_str(usage.cost),
            ]
        )
    return len(usages)
